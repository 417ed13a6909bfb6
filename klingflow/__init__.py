"""klingflow: version-controlled YAML pipelines for Kling video through useapi.net."""

__version__ = "0.1.0"
