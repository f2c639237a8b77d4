"""The repository's LICENSE and CITATION.cff: present, parsable, and saying the same."""

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_citation_cff_has_the_required_keys_and_cites_the_paper():
    citation = yaml.safe_load(_read("CITATION.cff"))
    # The keys CFF 1.2.0 requires at the top level and in a reference.
    assert citation["cff-version"] == "1.2.0"
    for key in ("message", "title"):
        assert isinstance(citation[key], str) and citation[key].strip()
    assert citation["authors"] and all("name" in a or "family-names" in a
                                       for a in citation["authors"])
    paper = citation["preferred-citation"]
    assert paper["type"] == "article"
    assert paper["title"] == ("Generating Less Certain Adversarial Examples Improves "
                              "Robust Generalization")
    assert [a["family-names"] for a in paper["authors"]] == ["Zhang", "Backes", "Zhang"]
    code = "https://github.com/TrustMLRG/AdvCertainty"
    assert paper["repository-code"] == code
    assert [ref["repository-code"] for ref in citation["references"]] == [code]
    for ref in [paper] + citation["references"]:
        assert ref["title"] and ref["authors"] and ref["type"]


def test_license_is_apache_2_and_the_citation_says_so():
    license_text = _read("LICENSE")
    assert "The dac_tf authors" in license_text.splitlines()[0]
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub
    assert yaml.safe_load(_read("CITATION.cff"))["license"] == "Apache-2.0"
