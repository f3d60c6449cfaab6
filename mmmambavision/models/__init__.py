from .mambavision import MambaVision

__all__ = ['MambaVision']
