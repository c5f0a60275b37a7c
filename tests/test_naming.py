"""workflows/naming.py: N2VC-compatible generated release names, checked against real helm (+ labels)."""

from __future__ import annotations

import random
import re
import string
import subprocess
from pathlib import Path

import pytest

from sandbox.chartrepo import CHARTS_DIR
from workflows.naming import SUFFIX_MAX, generate_kdu_instance_name, name_stem
from workflows.validation import HELM_SYSTEM_LABELS, InvalidInputError, validate_labels, validate_release_name

WEBAPP_CHART = CHARTS_DIR / "webapp"

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class FixedRandom(random.Random):
    """randint returns a fixed number, so expected names can be written out in full."""

    def __init__(self, number: int) -> None:
        super().__init__(0)
        self.number = number
        self.asked: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        return self.number


@pytest.mark.parametrize(
    "model, number, expected",
    [
        pytest.param(
            "stable/openldap:1.2.2",
            42,
            "stable-openldap-1-2-2-0000000042",
            id="N2VC example keeps repo and version",
        ),
        pytest.param(
            "stable/nginx", 99_999_999, "stable-nginx-0099999999", id="largest suffix is zero-padded to 10"
        ),
        pytest.param(
            "oci://reg.io:5000/charts/My_Chart:1.0", 1, "my-chart-1-0-0000000001", id="oci keeps last segment"
        ),
        pytest.param("mychart-1.0.0.tgz", 7, "mychart-1-0-0-tgz-0000000007", id="local archive"),
        pytest.param(
            "1password/connect", 5, "a1password-connect-0000000005", id="digit first gets the a prefix"
        ),
        pytest.param("", 3, "kdu-0000000003", id="empty model no longer crashes"),
        pytest.param("---", 3, "kdu-0000000003", id="only separators"),
        pytest.param("chärt", 3, "ch-rt-0000000003", id="non-ascii letters are replaced"),
        pytest.param(
            "/abs/path/Chart", 3, "chart-0000000003", id="absolute path keeps last segment like N2VC"
        ),
    ],
)
def test_generate_kdu_instance_name_follows_n2vc_scheme(model, number, expected):
    rng = FixedRandom(number)
    assert generate_kdu_instance_name(model, rng) == expected
    assert rng.asked == [(1, SUFFIX_MAX)]


def test_generate_kdu_instance_name_cuts_the_stem_to_35_characters():
    name = generate_kdu_instance_name("repo/" + "x" * 100, FixedRandom(1))
    assert name == "repo-" + "x" * 30 + "-0000000001"
    assert len(name_stem("9" + "x" * 100)) == 36  # 35 plus the "a" prefix: 36 + 11 = 47 <= 53


def test_generate_kdu_instance_name_is_always_a_valid_release_name():
    rng = random.Random(1980)
    alphabet = string.printable + "äéß日本-_/:."
    for _ in range(3000):
        model = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        name = generate_kdu_instance_name(model, rng)
        assert len(name) <= 53 and DNS1123_LABEL.fullmatch(name), (model, name)
        assert validate_release_name(name) == name


def test_generate_kdu_instance_name_is_reproducible_from_the_seed():
    # The workflow passes workflow.random(), seeded per run: same seed, same name on replay.
    assert generate_kdu_instance_name("stable/nginx", random.Random(7)) == generate_kdu_instance_name(
        "stable/nginx", random.Random(7)
    )


def _helm_template(helm: Path, name: str, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A private HOME and helm dirs: the test must not read or write the developer's helm config.
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(home / "c"),
           "HELM_CONFIG_HOME": str(home / "g"), "HELM_DATA_HOME": str(home / "d")}  # fmt: skip
    return subprocess.run(
        [str(helm), "template", name, str(WEBAPP_CHART), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_generated_and_validated_names_are_what_real_helm_accepts(tools, tmp_path):
    generated = [
        generate_kdu_instance_name(model, random.Random(i))
        for i, model in enumerate(
            ["stable/openldap:1.2.2", "oci://r.io:5000/x/Chart_Name:1.0", "", "9" * 200]
        )
    ]
    for name in [*generated, "a" * 53]:
        assert validate_release_name(name) == name
        done = _helm_template(tools.helm, name, tmp_path)
        assert done.returncode == 0, (tools.dialect, name, done.stderr)
    # What we refuse, helm refuses too (for "-x" helm even parses the name as a flag, as N2VC's
    # string-built commands did).
    for name in ["a" * 54, "Upper", "a_b", "-x"]:
        with pytest.raises(InvalidInputError):
            validate_release_name(name)
        done = _helm_template(tools.helm, name, tmp_path)
        assert done.returncode != 0, (tools.dialect, name)
        assert "invalid release name" in done.stderr or "unknown shorthand flag" in done.stderr


def test_helm_system_labels_match_the_validator(tools, tmp_path):
    done = _helm_template(tools.helm, "x", tmp_path, "--labels", "name=foo")
    assert done.returncode != 0
    listed = re.search(r"System labels: \[([^\]]*)\]", done.stderr)
    assert listed, done.stderr
    assert set(listed.group(1).split()) == set(HELM_SYSTEM_LABELS)
    for key in HELM_SYSTEM_LABELS:
        with pytest.raises(InvalidInputError):
            validate_labels({key: "x"})
