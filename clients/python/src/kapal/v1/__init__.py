"""kapal.v1: generated from proto/kapal/v1 by clients/python/generate. Do not edit."""
