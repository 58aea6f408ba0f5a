"""artray: cultural-heritage vision-language batch compute on Ray."""
__version__ = "0.1.0"
