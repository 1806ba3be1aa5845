"""Spurious correlations: attributes and text cues that predict the label on their own.

`spurious_attribute` tests every metadata column and derived property (auditor/properties.py)
against the label; `spurious_token` tests every token and bigram of the text (the "competency
problems" test of Gardner et al. 2021). Both flag the rows a model that learnt the shortcut would
treat differently: the under-represented groups of an attribute (the rows a shortcut fails on),
and the rows whose cue agrees with their label (the rows that teach the shortcut).
"""

from __future__ import annotations

from .attribute import SpuriousAttribute, SpuriousAttributeParams
from .stats import (
    association_stats,
    conditional_mutual_information,
    content_share_of_columns,
    contingency,
    cv_attribute_accuracy,
    majority_baseline,
)
from .token import SpuriousToken, SpuriousTokenParams, bag_of_words_lift, token_cues

__all__ = [
    "SpuriousAttribute",
    "SpuriousAttributeParams",
    "SpuriousToken",
    "SpuriousTokenParams",
    "association_stats",
    "bag_of_words_lift",
    "conditional_mutual_information",
    "content_share_of_columns",
    "contingency",
    "cv_attribute_accuracy",
    "majority_baseline",
    "token_cues",
]
