"""Pure Spark transformations (DataFrame in, DataFrame out), shared by the speed and batch layers."""
