import warnings

import dagster as dg

# BackfillPolicy.single_run() is the documented way to backfill a Spark asset in one run; its beta
# label would otherwise print on every load of the code location.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
