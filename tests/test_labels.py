import numpy as np
import pytest

from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, format_finding_labels, parse_finding_labels


def test_no_finding_is_all_zero():
    assert parse_finding_labels("No Finding", source="x").tolist() == [0.0] * 14


def test_pipe_separated_and_aliases():
    v = parse_finding_labels("Effusion|Infiltrate|Pleural Thickening", source="x")
    on = {LABELS[i] for i in np.flatnonzero(v)}
    assert on == {"Effusion", "Infiltration", "Pleural_Thickening"}


def test_missing_value_is_unknown():
    assert np.isnan(parse_finding_labels("", source="x")).all()
    assert np.isnan(parse_finding_labels(float("nan"), source="x")).all()


def test_unknown_label_names_the_source_and_label():
    with pytest.raises(DataError, match=r"labels\.csv: unknown label name 'Covid'"):
        parse_finding_labels("Effusion|Covid", source="labels.csv")


def test_unknown_label_can_be_dropped_and_counted():
    dropped: list[str] = []
    v = parse_finding_labels("Effusion|Covid", source="x", unknown="drop", dropped=dropped)
    assert dropped == ["Covid"] and v.sum() == 1


def test_round_trip():
    v = parse_finding_labels("Mass|Nodule", source="x")
    assert format_finding_labels(v) == "Mass|Nodule"
    assert format_finding_labels(np.zeros(14)) == "No Finding"
