from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from antenna_assets.resources.lake import LakeResource
from antenna_assets.spark_session import build_spark_session


class SparkResource(ConfigurableResource):
    """A Spark session with the Kafka connector and UTC time. `master` empty: ANTENNA_SPARK_MASTER."""

    master: str = Field(default="", description="local[*], spark://host:7077, ...; empty: from the environment")
    app_name: str = "antenna_assets"
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark configuration")
    _session = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._session = None

    def session_for(self, lake: LakeResource):
        """The session, able to read and write `lake`: a gs:// lake named only in the resource's config
        still gets the connector jar (new session) and its endpoint, project and credentials."""
        if self._session is None:
            extra = dict(self.conf)
            if self.master:
                extra["spark.master"] = self.master
            self._session = build_spark_session(lake.settings(), self.app_name, extra)
        lake.configure_session(self._session)
        return self._session
