"""Names of the batch layer's asset checks (one place, so sensors, tests and docs agree)."""

NON_NEGATIVE_SUMS = "non_negative_sums"
NON_EMPTY_WHEN_RAW_NON_EMPTY = "non_empty_when_raw_non_empty"
RECONCILES_WITH_RAW = "reconciles_with_raw_hour"
AGREES_WITH_SPEED_LAYER = "agrees_with_speed_layer"
ALL_USERS_KNOWN = "all_users_known"
