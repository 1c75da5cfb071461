"""antenna_assets: a lambda architecture for mobile-network usage data on Dagster."""
