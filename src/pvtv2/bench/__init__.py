"""``pvtv2 bench``: this project's paths (eager, torch.compile, onnxruntime) beside timm and Hugging Face.

>>> from pvtv2.bench import BenchConfig, run_benchmark
>>> result = run_benchmark(BenchConfig(models=("pvt_v2_b0",), batches=(1, 16)))
>>> print(result.table())
"""

from .paths import DEFAULT_PATHS, PATHS
from .run import SMOKE, BenchConfig, BenchResult, format_tables, run_benchmark, save_json

__all__ = ["DEFAULT_PATHS", "PATHS", "SMOKE", "BenchConfig", "BenchResult", "format_tables", "run_benchmark",
           "save_json"]
