"""Timezone-aware daily engagement rollups for a multi-tenant SaaS, on Dagster."""

import warnings

# Dagster flags the `backfill_policy` parameter of `@asset` as beta and warns at each use,
# so every load of the code location (each CLI call, each process of `dagster dev`) printed
# them. The single-run policy is deliberate (README, Backfills), so exactly that notice is
# silenced, here, before any asset module is imported; every other warning still shows.
# Matched by message: naming Dagster's BetaWarning would import Dagster for the read path.
warnings.filterwarnings(
    "ignore", message=r"Parameter `backfill_policy` of function `\w+` is currently in beta")
