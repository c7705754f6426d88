"""rome-bench: robustness against multiple adversarial perturbations."""

__version__ = "0.1.0"
