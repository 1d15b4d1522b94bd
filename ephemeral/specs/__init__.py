"""Cluster specs: the models, the loader, profiles and overrides, and cluster identity."""

from ephemeral.specs.identity import ClusterIdentity, label_value
from ephemeral.specs.loader import load_file, parse_spec, resolve_ref, spec_hash
from ephemeral.specs.models import ClusterSpec, RaySpec, SparkSpec
from ephemeral.specs.resolve import CI_CPU, Overrides, ResolvedSpec, apply_profile, resolve

__all__ = [
    "CI_CPU",
    "ClusterIdentity",
    "ClusterSpec",
    "Overrides",
    "RaySpec",
    "ResolvedSpec",
    "SparkSpec",
    "apply_profile",
    "label_value",
    "load_file",
    "parse_spec",
    "resolve",
    "resolve_ref",
    "spec_hash",
]
