"""Timezone-aware daily engagement rollups for a multi-tenant SaaS, on Dagster."""
