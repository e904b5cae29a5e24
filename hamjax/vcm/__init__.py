"""The valence-change-memory experiment, end to end.

Train on a few TiN | HfO2 | Ti | TiN devices with randomly placed oxygen vacancies, predict
the Hamiltonian of devices the model never saw (formed and broken conductive filaments),
and compare the currents computed from predicted and reference Hamiltonians:

1. devices (:mod:`hamjax.structures`): training devices with random vacancies, one
   validation device, and four test devices, "Filament 1/2" (a straight cylinder and a
   tilted cone) and "Broken 1/2" (the same with an intact gap at the TiN or at the Ti side);
2. references: GFN1-xTB H and S with tblite (:mod:`hamjax.reference`), one block per
   lattice image (``tblite.scf_supercell`` gives the SCF a transverse k-grid), in child
   processes with OpenBLAS when available, saved as dataset files (resumable);
3. training (:func:`hamjax.train.train`) on slices (augmented partitioning);
4. full-device predictions (:mod:`hamjax.inference`);
5. errors: node, edge and total MAE over every H entry of the predicted blocks (per image
   block; against a Gamma-folded reference, after folding the prediction to Gamma);
6. transport (:mod:`hamjax.two_terminal`, :mod:`hamjax.transport`): each cell opened
   between its TiN ends (leads = two lead cells at each end), T(E) and I at the bias, at
   Gamma or averaged over the transverse k-points of :attr:`VCMConfig.transport_kgrid`; the
   predicted device between its own predicted leads and, by default, also between the
   reference's leads (:attr:`VCMConfig.prediction_leads`);
7. sensitivity (:mod:`hamjax.sensitivity`): dI/dH per atom and dI/dR through the model on
   one test device, with a finite-difference check of dI/dR.

Outputs in the run folder: ``table.md`` and ``table.json`` (the paper's Table I),
``summary.json``, ``errors.png`` (violin plots of the per-entry errors with 5th/95th
percentiles), ``error_profile.png`` and ``.json`` (the MAE in 2 A slabs along the
transport axis, :func:`error_profile`), ``transmission.png`` (T(E) of reference and
prediction, bias window marked, and the reference electrodes' open channels),
``transmission.json`` (those curves, :func:`transmission_data`), ``device_<name>.png``,
``sensitivity.png`` and ``.json`` (the device coloured by each atom's sensitivity, and the
same along the transport axis; the per-atom values), ``timings.json``, ``data/`` (dataset
files) and ``model/`` (checkpoints).

Fermi levels: both currents use the Fermi level of the electrodes at their temperature:
the level at which the lead-cell atoms hold the Mulliken population they have in the
reference's SCF (:func:`electrode_fermi_level`; the prediction's from its own levels with
that population), not the chemical potential of the SCF's Fermi smearing (about 1 eV low in
TiN's p-d pseudogap) nor the total electron count of a Gamma cell (which moves with every
vacancy's donated charge).

Stages (:data:`STAGES`): "references", "train" and "evaluate" run one after another or
separately (``experiments/vcm.py``), e.g. references on a CPU machine, training on a GPU.

The modules, every public name re-exported here:

- :mod:`hamjax.vcm.config`: :class:`VCMConfig`, the defaults, :func:`demo_config`,
  :func:`load_config`, :func:`training_config`;
- :mod:`hamjax.vcm.devices`: :func:`build_devices` and the devices' file names;
- :mod:`hamjax.vcm.references`: the tblite references, cached (:func:`compute_references`);
- :mod:`hamjax.vcm.analysis`: prediction against reference, entry by entry;
- :mod:`hamjax.vcm.electrodes`: the electrodes' Fermi level and the alignment on it (the
  Fermi-level arithmetic is :mod:`hamjax.occupations`');
- :mod:`hamjax.vcm.transport`: T(E), currents and open channels of the opened devices;
- :mod:`hamjax.vcm.figures`, :mod:`hamjax.vcm.report`: the figures, table and JSON files;
- :mod:`hamjax.vcm.sensitivity`: dI/dH and dI/dR maps;
- :mod:`hamjax.vcm.stages`: the stages and :func:`run_experiment`.
"""

from hamjax.vcm.analysis import (
    atom_errors,
    block_sums,
    entry_errors,
    error_profile,
    fold_prediction,
    mae_row,
    prediction_for_transport,
)
from hamjax.vcm.config import (
    DEFAULT_DEVICE,
    DEFAULT_TBLITE,
    DEFAULT_TRAIN,
    PREDICTION_LEADS,
    SETTINGS_FIELDS,
    TEST_DEVICES,
    VCMConfig,
    demo_config,
    load_config,
    training_config,
)
from hamjax.vcm.devices import (
    build_devices,
    file_name,
    reference_file,
)
from hamjax.vcm.electrodes import (
    align_to_electrodes,
    aligned,
    electrode_atoms,
    electrode_fermi_level,
    electrode_levels,
    electrode_population,
    electrode_side,
    fermi_level_by_count,
)
from hamjax.vcm.figures import (
    plot_error_profile,
    plot_errors,
    plot_sensitivity,
    plot_transmission,
    vacancy_positions,
)
from hamjax.vcm.references import (
    check_temperatures,
    compute_references,
    device_tblite_settings,
)
from hamjax.vcm.report import (
    markdown_table,
    write_json,
)
from hamjax.vcm.sensitivity import (
    region_shares,
    sensitivity_maps,
)
from hamjax.vcm.stages import (
    STAGES,
    evaluate_stage,
    reference_stage,
    run_experiment,
    train_stage,
)
from hamjax.vcm.transport import (
    device_transport,
    lead_channels,
    transmission_data,
    transport_device,
)

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_TBLITE",
    "DEFAULT_TRAIN",
    "PREDICTION_LEADS",
    "SETTINGS_FIELDS",
    "STAGES",
    "TEST_DEVICES",
    "VCMConfig",
    "align_to_electrodes",
    "aligned",
    "atom_errors",
    "block_sums",
    "build_devices",
    "check_temperatures",
    "compute_references",
    "demo_config",
    "device_tblite_settings",
    "device_transport",
    "electrode_atoms",
    "electrode_fermi_level",
    "electrode_levels",
    "electrode_population",
    "electrode_side",
    "entry_errors",
    "error_profile",
    "evaluate_stage",
    "fermi_level_by_count",
    "file_name",
    "fold_prediction",
    "lead_channels",
    "load_config",
    "mae_row",
    "markdown_table",
    "plot_error_profile",
    "plot_errors",
    "plot_sensitivity",
    "plot_transmission",
    "prediction_for_transport",
    "reference_file",
    "reference_stage",
    "region_shares",
    "run_experiment",
    "sensitivity_maps",
    "train_stage",
    "training_config",
    "transmission_data",
    "transport_device",
    "vacancy_positions",
    "write_json",
]
