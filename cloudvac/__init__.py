"""cloudvac: a vacuum-model VM lifecycle manager for DIRAC pilots on IaaS clouds."""

__version__ = "0.1.0"
