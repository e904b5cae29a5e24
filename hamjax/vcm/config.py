"""The VCM experiment's settings: :class:`VCMConfig`, its defaults and its JSON file.

:data:`TEST_DEVICES` and the ``DEFAULT_*`` settings are those of the full default run
(``experiments/vcm_default.json`` holds exactly them); :func:`demo_config` is the small setting
of ``hamjax demo``; :func:`load_config` reads a JSON file of what differs from the defaults
through :mod:`hamjax.config` (errors name the file and key); :func:`training_config` turns the
``train`` and ``model`` settings into a :class:`hamjax.train.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from hamjax.config import from_dict, read_json_object
from hamjax.io.model_folder import read_checkpoint
from hamjax.structures import A_TIN
from hamjax.train import config_from_dict
from hamjax.vcm.devices import file_name

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_TBLITE",
    "DEFAULT_TRAIN",
    "PREDICTION_LEADS",
    "SETTINGS_FIELDS",
    "TEST_DEVICES",
    "VCMConfig",
    "demo_config",
    "load_config",
    "training_config",
]


#: The four unseen test devices: name -> DeviceSpec fields on top of ``VCMConfig.device``.
TEST_DEVICES: dict[str, dict] = {
    "Filament 1": {"vacancy_mode": "filament", "seed": 101},
    "Filament 2": {
        "vacancy_mode": "filament",
        "filament_end_radius_angstrom": 1.8,
        "filament_end_center": (0.3, 0.6),
        "seed": 102,
    },
    "Broken 1": {"vacancy_mode": "broken", "gap_angstrom": 4.0, "gap_side": "tin", "seed": 101},
    "Broken 2": {"vacancy_mode": "broken", "gap_angstrom": 4.0, "gap_side": "ti", "seed": 102},
}


#: DeviceSpec fields of the full default run: one TiN cell (4.24 A) across, 8 A of oxide and
#: 5 A of Ti between six TiN cells on each side (about 110 atoms), small enough for the
#: references of all seven devices on two CPU cores. ``experiments/vcm_wide.json`` is the
#: next size up (2 x 2 cells across, about 500 atoms; reference costs in
#: docs/reference-data.md).
DEFAULT_DEVICE: dict = {
    "transverse_cells": (1, 1),
    "tin_left_cells": 6,
    "tin_right_cells": 6,
    "hfo2_thickness_angstrom": 8.0,
    "ti_thickness_angstrom": 5.0,
    "filament_radius_angstrom": 2.0,
}


#: tblite settings of the devices: Fermi smearing kT = 0.06 Ha. At tblite's periodic default
#: (0.03 Ha, mixing 0.05) the 110-atom demo devices (six TiN cells per electrode) did not
#: converge in 250 cycles, and then converged in 89-97 cycles on the retry at 0.06 Ha.
DEFAULT_TBLITE: dict = {"electronic_temperature_hartree": 0.06}


#: Training of the full default run: the paper's model (ModelConfig defaults: 8 A cutoff,
#: lmax 4, 16 channels) with a cosine schedule from 2e-3 to 1e-5, which trains this model much
#: further than the paper's own 1e-4 -> 1e-5 over 200 epochs (runs and times: docs/vcm.md).
DEFAULT_TRAIN: dict = {
    "epochs": 500,
    "learning_rate": 2e-3,
    "final_learning_rate": 1e-5,
    "warmup_steps": 50,
    "slice_width_angstrom": 12.0,
    "max_graphs_per_batch": 2,
    "checkpoint_every_epochs": 25,
}


#: Choices of :attr:`VCMConfig.prediction_leads`.
PREDICTION_LEADS = ("predicted", "reference", "both")


@dataclass(frozen=True)
class VCMConfig:
    """Everything the experiment needs (JSON keys = field names; nested dicts as given).

    Attributes:
        device: :class:`hamjax.structures.DeviceSpec` fields shared by every device.
        train_seeds: one random-vacancy training device per seed.
        train_devices: further training devices, name -> DeviceSpec fields as in
            ``test_devices`` (any vacancy mode, e.g. filament-like clusters beside the
            random-vacancy devices; same background density as the test devices).
        validation_seed: seed of the random-vacancy validation device.
        vacancy_density: fraction of oxide O removed in the random devices.
        filament_background_density: random vacancies outside the filaments of test devices.
        test_devices: name -> DeviceSpec fields of each test device.
        tblite: :class:`hamjax.reference.tblite.TBLiteSettings` fields.
        model: :class:`hamjax.models.ModelConfig` fields (the basis is GFN1-xTB's; the
            defaults are the paper's settings).
        train: :class:`hamjax.train.TrainConfig` fields (data paths are filled in);
            default :data:`DEFAULT_TRAIN`.
        transport_cutoff_angstrom: couplings of H and S kept in the transport problem (both
            reference and prediction; the prediction has zeros beyond the model cutoff).
            GFN1-xTB's diffuse basis needs about 10 A: cut shorter, the overlap of the open
            device stops being positive definite (8 A gave a lowest eigenvalue of -0.03).
        lead_cells: TiN conventional cells (4.24 A) per lead cell; their length must reach
            ``transport_cutoff_angstrom``.
        bias_volt: bias between the electrodes, volts.
        temperature_k: electrode temperature, kelvin.
        energy_window_ev: T(E) is computed on E_F +/- this, eV (must exceed bias/2).
        n_energies: energy points.
        refine_energies: most energies added where T(E) can move the current
            (:func:`hamjax.transport.grid.refine_grid`, which stops earlier once no
            interval can move it by 0.1%); 0 keeps the uniform grid. The default run's
            Filament 1 reference, whose current sits in a few resonances 1-3 meV wide, read
            4.6e-7 A with 120 (23% low), 5.8e-7 A with 240 and 6.02e-7 A with 480 (430
            used) against 6.03e-7 A with its peaks resolved to 0.1 meV; its prediction
            stopped at 239.
        transport_kgrid: Monkhorst-Pack grid of transverse k-points ``(1, n_b, n_c)`` of the
            transport (:func:`hamjax.transport.transmission_kpoints`, image-resolved records
            only): T(E) is the k-average per transverse cell. ``(1, 1, 1)``: Gamma, the
            images summed. With more than one k-point the predicted device has its own leads
            only (``prediction_leads`` "reference" and "both" need Gamma), and the
            sensitivity maps stay at Gamma.
        sensitivity_device: test device for the sensitivity maps ("" skips them).
        pretrained_model: a shipped model's name (:mod:`hamjax.pretrained`, e.g.
            "vcm-gfn1") or a model folder that predicts the test devices: no model is
            trained and only the test devices' references are computed. "" (default):
            the run trains its own model in ``out/model``.
        prediction_leads: the leads of the predicted device. "predicted": its own TiN ends,
            as in the paper (the whole device predicted); "reference": the reference's lead
            blocks, with one predicted electrode cell at each end of the device region (the
            standard NEGF setup, electrodes from their own calculation; the current then
            uses the reference's electrode Fermi level); "both": the first is ``I_pred``
            (and the sensitivity maps), the second an extra column. On the default run's
            Filament 1 the predicted leads had 3 open channels from 1 to 0.3 eV below E_F
            where the reference's have none, and that background carried most of the
            predicted current.
        align_to_electrode_fermi_level: train, compare and transport every Hamiltonian
            with its energy zero at its electrodes' Fermi level (:func:`align_to_electrodes`;
            the raw references stay on disk as computed).
        finite_difference_atoms: atoms displaced for the finite-difference check of dI/dR.
        finite_difference_step_angstrom: displacement of that check. Sharp resonances make
            I(R) curve on small scales: for a briefly trained model the central difference
            was 55% off the analytic dI/dR at 2e-4 A, 8% at 5e-5 A and 1.1% at 1e-5 A.
    """

    device: Mapping = field(default_factory=lambda: dict(DEFAULT_DEVICE))
    train_seeds: tuple[int, ...] = (1, 2)
    train_devices: Mapping = field(default_factory=dict)
    validation_seed: int = 3
    vacancy_density: float = 0.1
    filament_background_density: float = 0.02
    test_devices: Mapping = field(default_factory=lambda: dict(TEST_DEVICES))
    tblite: Mapping = field(default_factory=lambda: dict(DEFAULT_TBLITE))
    model: Mapping = field(default_factory=dict)
    train: Mapping = field(default_factory=lambda: dict(DEFAULT_TRAIN))
    transport_cutoff_angstrom: float = 10.0
    lead_cells: int = 3
    bias_volt: float = 1.0
    temperature_k: float = 300.0
    energy_window_ev: float = 1.0
    n_energies: int = 121
    refine_energies: int = 480
    sensitivity_device: str = "Filament 1"
    prediction_leads: str = "both"
    align_to_electrode_fermi_level: bool = True
    finite_difference_atoms: int = 2
    finite_difference_step_angstrom: float = 1e-5
    transport_kgrid: tuple[int, int, int] = (1, 1, 1)
    pretrained_model: str = ""

    def __post_init__(self):
        grid = tuple(int(n) for n in self.transport_kgrid)
        if len(grid) != 3 or grid[0] != 1 or min(grid) < 1:
            raise ValueError(
                f"VCMConfig: transport_kgrid must be (1, n_b, n_c) with n >= 1 (one point along "
                f"the transport axis), got {self.transport_kgrid}"
            )
        object.__setattr__(self, "transport_kgrid", grid)
        if grid != (1, 1, 1) and self.prediction_leads == "reference":
            raise ValueError(
                "VCMConfig: prediction_leads 'reference' needs transport_kgrid (1, 1, 1) "
                "(k-point transport uses each device's own leads)"
            )
        if self.energy_window_ev <= self.bias_volt / 2:
            raise ValueError(
                f"VCMConfig: energy_window_ev ({self.energy_window_ev}) must exceed half the "
                f"bias ({self.bias_volt / 2})"
            )
        if self.sensitivity_device and self.sensitivity_device not in self.test_devices:
            raise ValueError(
                f"VCMConfig: sensitivity_device {self.sensitivity_device!r} is not one of the "
                f"test devices {list(self.test_devices)}"
            )
        if self.lead_cells * A_TIN < self.transport_cutoff_angstrom:
            raise ValueError(
                f"VCMConfig: lead_cells * 4.24 A = {self.lead_cells * A_TIN:.2f} A must reach "
                f"transport_cutoff_angstrom ({self.transport_cutoff_angstrom} A)"
            )
        if not self.train_seeds and not self.train_devices:
            raise ValueError("VCMConfig: no training device (train_seeds and train_devices empty)")
        taken = {f"train-{seed}" for seed in self.train_seeds} | {"validation"}
        taken = {file_name(n) for n in taken | set(self.test_devices)}
        clash = sorted(n for n in self.train_devices if file_name(n) in taken)
        if clash:
            raise ValueError(
                f"VCMConfig: train_devices {clash} reuse the (file) name of another device "
                "(train-<seed>, validation or a test device)"
            )
        try:  # a bad training or model key fails here, not after the references
            training_config(self)
        except ValueError as err:
            raise ValueError(f"VCMConfig 'train' / 'model': {err}") from None
        if self.prediction_leads not in PREDICTION_LEADS:
            raise ValueError(
                f"VCMConfig: prediction_leads {self.prediction_leads!r}: choose one of "
                f"{', '.join(map(repr, PREDICTION_LEADS))}"
            )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def demo_config(pretrained: str | None = None, fine_tune_steps: int = 0) -> VCMConfig:
    """The small setting of ``hamjax demo``: minutes on two CPU cores.

    Devices one TiN cell (4.24 A) across, 8 A of oxide and 5 A of Ti between six TiN cells on
    each side (each lead needs two lead cells of 3 x 4.24 A >= the 10 A transport cutoff);
    two test devices, "Filament 1" and "Broken 1" (the same filament with an intact gap).

    Args:
        pretrained: a shipped model's name or a model folder (``VCMConfig.pretrained_model``)
            that predicts the test devices, with transport on a 1 x 2 x 2 transverse k-grid.
            None: a small model (lmax 2, 8 channels, 5 A cutoff) is trained briefly on 12 A
            slices of two training devices, with transport at Gamma.
        fine_tune_steps: with ``pretrained``, train that many steps from its parameters on
            the demo's training devices (its model settings, a low learning rate) and
            predict with the result; 0: predict with ``pretrained`` as shipped.
    """
    config = VCMConfig(
        device=dict(DEFAULT_DEVICE),  # the full run's devices, fewer of them
        model={"cutoff": 5.0, "max_ell": 2, "channels": 8, "heads": 2},
        train={
            "epochs": 30,
            "learning_rate": 5e-3,
            "final_learning_rate": 5e-4,
            "warmup_steps": 10,
            "slice_width_angstrom": 12.0,
            "max_graphs_per_batch": 2,
        },
        test_devices={name: TEST_DEVICES[name] for name in ("Filament 1", "Broken 1")},
        n_energies=41,
        refine_energies=0,  # within the demo's 10 minutes; the table's grid check shows it
        finite_difference_atoms=1,
    )
    if pretrained is None:
        if fine_tune_steps:
            raise ValueError("demo_config: fine-tuning needs a pretrained model")
        return config
    if fine_tune_steps < 0:
        raise ValueError(f"demo_config: fine_tune_steps must be >= 0, got {fine_tune_steps}")
    # couplings kept to the lead-cell length (3 x 4.24 A): cut at 10 A the opened device's
    # S(k) is indefinite off Gamma (docs/reference-data.md)
    config = dataclasses.replace(
        config,
        transport_kgrid=(1, 2, 2),
        transport_cutoff_angstrom=12.7,
        prediction_leads="predicted",
    )
    if not fine_tune_steps:
        return dataclasses.replace(config, pretrained_model=pretrained)
    model = read_checkpoint(pretrained).config["model"]
    return dataclasses.replace(
        config,
        model={k: v for k, v in model.items() if k != "basis"},  # the data's GFN1 basis
        train={
            **config.train,
            "init_from": pretrained,
            "steps": int(fine_tune_steps),
            "learning_rate": 2e-4,
            "final_learning_rate": 1e-5,
            "warmup_steps": 0,
            "onsite_bias_from_data": False,
        },
    )


SETTINGS_FIELDS = ("device", "tblite", "model", "train")


def load_config(path: str | os.PathLike | None) -> VCMConfig:
    """A :class:`VCMConfig` from a JSON file (None: the defaults); unknown keys are named.

    A file holds what differs from the defaults: top-level keys replace the default, and
    in the settings objects (``device``, ``tblite``, ``model``, ``train``) each key replaces
    the default's key, so ``{"train": {"epochs": 1000}}`` keeps the default learning rate.
    Device mappings (``test_devices``, ``train_devices``) replace the default whole.

    Raises:
        hamjax.config.ConfigError: (a ValueError) naming the file and the key: an unknown
            key, a value of the wrong type, or a value :class:`VCMConfig` rejects.
    """
    if path is None:
        return VCMConfig()
    data = read_json_object(path)
    defaults = VCMConfig()
    for key in SETTINGS_FIELDS:
        if isinstance(data.get(key), Mapping):  # anything else: from_dict names the key
            data[key] = {**getattr(defaults, key), **data[key]}
    return from_dict(VCMConfig, data, source=str(path))


def training_config(config: VCMConfig, **run):
    """The :class:`hamjax.train.TrainConfig` of ``config.train`` and ``config.model`` (the
    model on the VCM basis), with ``run`` (``data``, ``validation_data``: the experiment's
    files; ``progress``, unless ``config.train`` sets it) added.

    Raises ValueError naming an unknown or bad key, or a ``train`` key the experiment sets.
    """
    reserved = sorted({"data", "validation_data", "model"} & set(config.train))
    if reserved:
        raise ValueError(f"{reserved} are set by the experiment, not by 'train'")
    # config.train may not set data/validation_data (above), so it overrides only progress
    return config_from_dict({**run, **dict(config.train), "model": dict(config.model)})
