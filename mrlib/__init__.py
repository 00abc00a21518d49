"""mrlib: the thin library behind the knee-MRI reconstruction book."""
__version__ = "0.1.0"
