"""Release-name generation compatible with OSM N2VC's ``generate_kdu_instance_name`` (pure).

N2VC's scheme: take the chart reference (its last segment for URLs), turn every
non-alphanumeric character into ``-``, cut to 35 characters, prefix ``a`` if it does not start with a
letter, append ``-`` and a random number in 1..99,999,999 zero-padded to 10 digits, lower-case it.
``stable/openldap:1.2.2`` becomes ``stable-openldap-1-2-2-00xxxxxxxx``.

We keep that shape on purpose: OSM operators recognise these names, and LCM code parses nothing out
of them, so keeping the repo prefix and version costs nothing and changing them would surprise users.
What we fix (N2VC never checked that the name was free):

* an empty stem no longer crashes with ``IndexError``: it becomes ``kdu``;
* only ASCII letters and digits survive (N2VC's ``str.isalpha`` kept ``é``, which Kubernetes refuses);
* the result is checked to be a DNS-1123 label of at most 53 characters (36 + 1 + 10 = 47 at most);
* randomness comes from the caller's ``random.Random`` (``workflow.random()`` in a workflow, so the
  name is the same on replay), and uniqueness is checked by the workflow against the cluster.
"""

from __future__ import annotations

import random
import re

from contract.validation import MAX_RELEASE_NAME

#: N2VC cuts the chart-derived part to this many characters before the random suffix.
STEM_LENGTH = 35
SUFFIX_DIGITS = 10
SUFFIX_MAX = 99_999_999
#: How many names the InstallKdu workflow tries before giving up (collisions are ~1e-8 each).
MAX_NAME_ATTEMPTS = 5

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def name_stem(kdu_model: str) -> str:
    """The chart-derived part of a generated name (before the random suffix), N2VC-compatible."""
    chart = kdu_model
    # N2VC keeps only the last path segment of URLs and absolute paths; "repo/chart" stays whole.
    if chart.startswith("/") or "://" in chart:
        chart = chart[chart.rfind("/") + 1 :]
    stem = _NON_ALNUM.sub("-", chart)[:STEM_LENGTH]
    if not stem.strip("-"):
        stem = "kdu"
    if not stem[0].isalpha():
        stem = "a" + stem
    return stem


def generate_kdu_instance_name(kdu_model: str, rng: random.Random) -> str:
    """A fresh release name for ``kdu_model``: ``<stem>-<10 digits>``, lower-case.

    Returns a valid DNS-1123 label of at most 53 characters for any input string. Raises
    ``ValueError`` only if that guarantee were broken (a bug, never an input problem).
    """
    number = rng.randint(1, SUFFIX_MAX)
    name = f"{name_stem(kdu_model)}-{number:0{SUFFIX_DIGITS}d}".lower()
    if len(name) > MAX_RELEASE_NAME or not _DNS1123_LABEL.fullmatch(name):
        raise ValueError(f"generated release name {name!r} is not a valid helm release name")
    return name
