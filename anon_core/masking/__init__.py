"""Mask operators: importing this package registers the built-in ones."""

from anon_core.masking import avatar, blur, fill, pixelate  # noqa: F401  (register operators)
from anon_core.masking.apply import Masker, MaskSpec
from anon_core.masking.base import MaskOperator, Region, available_operators, create_operator, register_operator

__all__ = ["MaskOperator", "MaskSpec", "Masker", "Region", "available_operators", "create_operator",
           "register_operator"]
