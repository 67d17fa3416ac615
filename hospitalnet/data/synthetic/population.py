"""Synthetic patients, images and findings with ChestX-ray14-like statistics.

Target per-image prevalences (fraction of images carrying the label). The real data set's values
(DATA.md section 1) are used except that the rarest labels are raised to at least 2.5% so
that a few thousand images hold enough positives for every label to be learnable
somewhere; the report still shows the honest per-site counts.

| label | real | here |      | label | real | here |
|---|---|---|---|---|---|---|
| Atelectasis | 10.3% | 10.3% | | Consolidation | 4.2% | 4.2% |
| Cardiomegaly | 2.5% | 3.0% | | Edema | 2.1% | 2.5% |
| Effusion | 11.9% | 11.9% | | Emphysema | 2.2% | 2.5% |
| Infiltration | 17.7% | 17.7% | | Fibrosis | 1.5% | 2.5% |
| Mass | 5.2% | 5.2% | | Pleural_Thickening | 3.0% | 3.0% |
| Nodule | 5.6% | 5.6% | | Hernia | 0.2% | 2.5% |
| Pneumonia | 1.3% | 2.5% | | Pneumothorax | 4.7% | 4.7% |

Co-occurrence follows the clinical pattern of the real set: cardiomegaly raises the odds of edema
and effusion, effusion raises atelectasis, pneumonia comes with infiltration / consolidation.
Findings persist over a patient's follow-ups (each kept with probability 0.7, new ones appear).
Label noise: each true positive is missed in the label with probability 6%, and 0.5% of
(image, label) negatives are falsely labelled positive, as radiology-report mining does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hospitalnet.labels import LABEL_INDEX, LABELS, NUM_LABELS

PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.030,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.025,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.025,
    "Emphysema": 0.025,
    "Fibrosis": 0.025,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.025,
}

# (given, then): P(then | given) is multiplied by the factor; base rates are lowered to keep the
# marginal prevalence close to the table (see _base_rates).
CO_OCCURRENCE: tuple[tuple[str, str, float], ...] = (
    ("Cardiomegaly", "Edema", 5.0),
    ("Cardiomegaly", "Effusion", 3.0),
    ("Edema", "Effusion", 3.0),
    ("Effusion", "Atelectasis", 2.5),
    ("Pneumonia", "Infiltration", 3.0),
    ("Pneumonia", "Consolidation", 3.0),
    ("Mass", "Nodule", 2.0),
    ("Emphysema", "Pneumothorax", 2.0),
    ("Fibrosis", "Pleural_Thickening", 2.5),
)
LABEL_MISS = 0.06
LABEL_FALSE_POSITIVE = 0.005
KEEP_FINDING = 0.7
MAX_FOLLOWUPS = 6


def _draw_findings(rng: np.random.Generator, n: int, carry: np.ndarray | None) -> np.ndarray:
    """True findings of ``n`` images, in the order of LABELS, honouring co-occurrence."""
    prev = np.array([PREVALENCE[name] for name in LABELS])
    findings = np.zeros((n, NUM_LABELS), dtype=bool)
    # Draw in an order where every "given" comes before its "then".
    order = ["Cardiomegaly", "Pneumonia", "Mass", "Emphysema", "Fibrosis", "Edema", "Effusion"]
    order += [name for name in LABELS if name not in order]
    for name in order:
        j = LABEL_INDEX[name]
        p = np.full(n, prev[j] * 0.75)
        for given, then, factor in CO_OCCURRENCE:
            if then == name:
                p = np.where(findings[:, LABEL_INDEX[given]], np.minimum(p * factor, 0.9), p)
        findings[:, j] = rng.random(n) < p
    if carry is not None:
        keep = carry & (rng.random(carry.shape) < KEEP_FINDING)
        findings |= keep
    return findings


def draw_population(patients: int, seed_rng: np.random.Generator) -> pd.DataFrame:
    """One row per image: patient, follow-up, age, gender, view, true and recorded labels.

    Columns: ``patient_id`` (int), ``follow_up`` (int), ``age``, ``gender``, ``view``,
    ``true_<label>`` and ``<label>`` (recorded, with label noise) as 0/1 ints, plus per-patient
    anatomy seeds ``anatomy_seed`` used by the renderer.
    """
    rng = seed_rng
    n_images = np.minimum(1 + rng.geometric(0.55, size=patients) - 1, MAX_FOLLOWUPS)
    n_images = np.maximum(n_images, 1)
    rows = []
    anatomy = rng.integers(0, 2**31 - 1, size=patients)
    ages = rng.integers(18, 90, size=patients)
    genders = rng.choice(np.array(["M", "F"]), size=patients)
    ap_prone = rng.random(patients) < 0.3  # inpatients imaged supine / AP more often
    for pid in range(patients):
        prev = None
        for fu in range(int(n_images[pid])):
            true = _draw_findings(rng, 1, prev)[0]
            prev = true[None, :]
            sick = true.any()
            p_ap = 0.65 if ap_prone[pid] else (0.35 if sick else 0.15)
            view = "AP" if rng.random() < p_ap else "PA"
            rows.append(
                (pid, fu, int(ages[pid]) + fu // 3, genders[pid], view, int(anatomy[pid]), true)
            )
    truth = np.stack([r[6] for r in rows]).astype(np.int8)
    recorded = truth.copy()
    miss = (truth == 1) & (rng.random(truth.shape) < LABEL_MISS)
    false_pos = (truth == 0) & (rng.random(truth.shape) < LABEL_FALSE_POSITIVE)
    recorded[miss] = 0
    recorded[false_pos] = 1
    df = pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "follow_up": [r[1] for r in rows],
            "age": [r[2] for r in rows],
            "gender": [r[3] for r in rows],
            "view": [r[4] for r in rows],
            "anatomy_seed": [r[5] for r in rows],
        }
    )
    for j, name in enumerate(LABELS):
        df[f"true_{name}"] = truth[:, j]
        df[name] = recorded[:, j]
    return df
