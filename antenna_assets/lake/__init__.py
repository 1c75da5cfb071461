"""The lake: Parquet under a local folder (default) or gs://bucket/prefix, written by the speed layer, read by the batch layer."""
