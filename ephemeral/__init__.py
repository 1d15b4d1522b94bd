"""ephemeral: Airflow as the control plane for ephemeral Ray and Spark training clusters.

This package imports no engine (ray, pyspark, torch, kubernetes) at import time.
"""

__version__ = "0.1.0"
