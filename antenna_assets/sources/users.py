"""The contract's provisioned users and antennas (DATA_CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

from typing import NamedTuple

APPS = ("SKYPE", "TELEGRAM", "FACETIME", "FACEBOOK", "WHATSAPP")


class User(NamedTuple):
    id: str
    name: str
    email: str
    quota: int


def user_id(n: int) -> str:
    """`00000000-0000-0000-0000-0000000000NN` for user number n (1-based)."""
    return f"00000000-0000-0000-0000-{n:012d}"


def antenna_id(n: int) -> str:
    """Antenna n (0-based): the contract's five repeat one digit; more antennas get a numbered id."""
    if n < 10:
        d = str(n)
        return f"{d * 8}-{d * 4}-{d * 4}-{d * 4}-{d * 12}"
    return f"aaaaaaaa-0000-0000-0000-{n:012d}"


_PROVISIONED = [
    ("andres", 200000), ("paco", 300000), ("juan", 100000), ("fede", 5000), ("gorka", 200000),
    ("luis", 200000), ("eric", 300000), ("carlos", 100000), ("david", 300000), ("juanchu", 300000),
    ("charo", 300000), ("delicidas", 1000000), ("milagros", 200000), ("antonio", 1000000), ("sergio", 1000000),
    ("maria", 1000000), ("cristina", 300000), ("lucia", 300000), ("carlota", 200000), ("emilio", 200000),
]

PROVISIONED_USERS: tuple[User, ...] = tuple(
    User(user_id(n), name, f"{name}@gmail.com", quota) for n, (name, quota) in enumerate(_PROVISIONED, start=1)
)


def synthetic_users(count: int) -> tuple[User, ...]:
    """The contract's 20 users, then generated ones (for scale runs: 20,000 users)."""
    extra = tuple(User(user_id(n), f"user{n}", f"user{n}@gmail.com", 300000) for n in range(len(_PROVISIONED) + 1, count + 1))
    return (PROVISIONED_USERS + extra)[:count]
