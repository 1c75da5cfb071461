"""The batch layer: closed hours of the lake compacted, then the hourly tables computed with Spark SQL."""
