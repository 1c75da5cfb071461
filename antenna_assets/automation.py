"""Declarative Automation: the sensor that evaluates the assets' and checks' automation conditions (the
serving views follow the batch; the stream's lag is checked every few minutes). Like the two custom
sensors, it runs only when ANTENNA_AUTOMATION=1 (the demo sets it) or when turned on in the UI."""

import dagster as dg

from antenna_assets.settings import Settings

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(),
    default_status=dg.DefaultSensorStatus.RUNNING if Settings.from_env().automation else dg.DefaultSensorStatus.STOPPED,
    description="Materializes the serving views after the batch and runs the speed layer's lag check.",
)
