"""The speed layer: one Spark Structured Streaming query over the Kafka topic `devices`."""
