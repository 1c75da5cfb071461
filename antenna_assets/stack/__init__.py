"""The local stack: a real Kafka broker, an embedded PostgreSQL, and the jars they and Spark need."""
