"""vpmu vendor plugin `intel_arch`: Intel architectural PMU v1-v5 models and perf driver.

The entry point (group `vpmu.plugins`) names this module; it only exposes the hookimpl,
with no work at import (pitfall P16).
"""

from vpmu_intel_arch.plugin import vpmu_register_cpu_models

__all__ = ["vpmu_register_cpu_models"]
__version__ = "0.1.0"
