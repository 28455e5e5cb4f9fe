from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (a failure reproduces; mutation scores do not
# drift), with no deadline (this machine is shared). HYPOTHESIS_PROFILE=explore draws new, more examples.
settings.register_profile("ctreduce", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ctreduce"))


@pytest.fixture(autouse=True)
def _fresh_caches_under_mutmut():
    """Under mutmut (``make mutate``) every test starts with ctreduce's lru_caches empty: mutmut runs a
    mutant only against the tests it saw call the mutated function, and a function whose result an
    earlier test cached (Pillow's resampling weights, intensity tables) would look uncalled."""
    if "MUTANT_UNDER_TEST" in os.environ:
        for name, module in list(sys.modules.items()):
            if name.startswith("ctreduce") and name != "ctreduce.cli":  # the CLI's command objects stay built
                for value in list(vars(module).values()):
                    if callable(getattr(value, "cache_clear", None)):
                        value.cache_clear()
    yield


@pytest.fixture(scope="session")
def sample_volumes() -> list[Path]:
    """The two real chest CTs (downloaded once into the cache by ``ctreduce samples``)."""
    from ctreduce.sample_data.real_ct import SamplesUnavailable, fetch

    try:
        return fetch(quiet=True)
    except SamplesUnavailable as exc:
        pytest.skip(f"real sample CTs unavailable (offline?): {exc}")


@pytest.fixture(scope="session")
def real_ct_slice() -> Path:
    """A real CT slice shipped with pydicom-data (installed by the dev extra)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("693_UNCI.dcm"))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small mixed archive: two DICOM series, one NIfTI, one NRRD, plus non-volume files."""
    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

    root = tmp_path / "archive"
    for i, (thickness, n) in enumerate([(1.0, 30), (2.5, 20)]):
        hu, spacing = make_phantom(n_slices=n, size=64, slice_thickness=thickness, seed=i)
        write_dicom_series(hu, spacing, root / f"patient{i}" / "ct", seed=i)
    hu, spacing = make_phantom(n_slices=24, size=48, slice_thickness=2.0, seed=5)
    write_nifti(hu, spacing, root / "nifti" / "p5.nii.gz")
    hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=3.0, seed=6)
    write_nrrd(hu, spacing, root / "nrrd" / "p6.nrrd")
    (root / "notes.txt").write_text("not a volume")
    (root / "patient0" / "ct" / "annotation.xml").write_text("<xml/>")
    return root


CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))


def cli(*args, code: int = 0) -> subprocess.CompletedProcess:
    """``ctreduce ARGS`` as a user types it (the venv's console script): exits ``code``, never a traceback."""
    proc = subprocess.run([CTREDUCE, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Names, sizes, mtimes and contents of every file: proves a tree was not written to."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            stat = path.stat()
            out[str(path)] = f"{stat.st_size}:{stat.st_mtime_ns}:" + hashlib.md5(path.read_bytes()).hexdigest()
    return out


def reference_uint8(hu: np.ndarray) -> np.ndarray:
    """The paper's scaling written out literally, for comparisons."""
    x = hu.astype(np.float64)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros(x.shape, np.uint8)
    return np.rint((x - lo) / (hi - lo) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: much faster than two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def slices():
    """16 phantom slices as uint8 (16, 48, 48), the input of the SSL view transforms."""
    import torch

    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom

    hu, _ = make_phantom(n_slices=16, size=48)
    return torch.from_numpy(Intensity().to_uint8(hu))


@pytest.fixture(scope="session")
def export_48(tmp_path_factory) -> Path:
    """An npy export (40 px) of 48 phantom slices, 3 NRRD volumes of 16, reduced with method all."""
    import ctreduce
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("export48")
    for seed in range(3):
        hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=5.0, seed=seed)
        write_nrrd(hu, spacing, root / "ct" / f"p{seed}.nrrd")
    ctreduce.reduce(root / "ct", root / "run", method="all")
    ctreduce.export(root / "run", root / "export", format="npy", size=40)
    return root / "export"


# --- the two tiers: `make check` runs every test not marked slow, `make test` runs all -----------------

# Tests marked ``slow``: end to end or integration, each over about a second on an idle 2-core machine
# (measured with ``pytest --durations=0``): training runs (pre-training, fine-tuning, the experiment), more
# than one process (DDP, Ray, killed pools), a real browser, the README executed, the CLI end to end in
# subprocesses. Every module keeps its unit and property tests in `make check`.
SLOW: dict[str, set[str]] = {
    "test_cli.py": {
        "test_failed_volume_gives_exit_1_after_the_rest", "test_reduce_export_and_rerun", "test_report_command",
        "test_unusable_arguments_exit_2_with_a_message",
    },
    "test_core_install.py": {
        "test_deepnet_and_ssim_on_a_gpu_say_which_extra", "test_export_report_compare_duplicates_and_leakage",
        "test_reduce", "test_reduce_with_the_dhash_and_a_sweep", "test_scan",
        "test_training_commands_say_which_extra",
    },
    "test_downstream_protocol.py": {"test_a_finetune_records_the_learning_rate_of_every_epoch_and_its_normalisation"},
    "test_downstream_finetune.py": {
        "test_best_epoch_is_the_best_validation_epoch_not_the_lowest_training_loss",
        "test_cli_finetune_on_a_medmnist_npz_then_evaluate", "test_cli_finetune_on_two_cpu_devices_runs_ddp",
        "test_evaluate_recomputes_the_saved_metrics", "test_head_only_epochs_keep_the_backbone_fixed",
        "test_init_from_a_pretraining_run_folder_uses_its_statistics", "test_linear_probe_changes_only_the_head",
        "test_other_settings_in_the_same_folder_are_refused_unless_starting_over",
        "test_outputs_for_every_seed_and_the_summary",
        "test_rerun_continues_an_interrupted_seed_from_its_last_checkpoint",
        "test_schedule_unfreezes_after_the_head_only_epochs",
        "test_the_module_trains_as_a_plain_loop_of_the_papers_protocol",
    },
    "test_downstream_leakage.py": {
        "test_other_anatomy_is_not_a_leak", "test_test_images_in_the_pretraining_data_are_counted_and_warned",
    },
    "test_export_shards.py": {"test_a_pretraining_run_records_the_export_version_it_trained_on"},
    "test_experiment.py": {
        "test_a_cell_pretrained_on_two_devices_runs_each_stage_once", "test_tiny_grid_end_to_end_then_cached",
    },
    "test_export.py": {
        "test_two_workers_write_the_same_export_as_one",
    },
    "test_io_gaps.py": {
        "test_a_bad_slice_is_left_out_and_named_or_refuses_the_series",
    },
    "test_io_memory.py": {
        "test_reading_an_int16_volume_costs_at_most_twice_its_size",
    },
    "test_io_scan_cli.py": {
        "test_scan_of_a_folder_without_volumes_exits_2_with_one_line_like_reduce",
    },
    "test_messages.py": {
        "test_a_settings_mistake_is_one_line_before_torch_loads",
        "test_pretrain_prints_no_tips_or_deprecations_and_a_finished_rerun_trains_nothing",
    },
    "test_places.py": {
        "test_an_experiment_folder_inside_its_data_is_refused",
        "test_leakage_out_inside_the_task_is_refused_and_the_task_stays_usable",
        "test_pretrain_and_finetune_never_write_into_their_data", "test_report_inside_the_archive_is_refused",
    },
    "test_plugins.py": {
        "test_the_variable_brings_the_plugin_to_every_command",
    },
    "test_ray_cluster.py": {
        "test_a_node_that_does_not_see_an_output_folder_is_named_before_any_volume_is_read",
        "test_a_worker_dying_on_one_volume_is_that_volume_error", "test_export_on_two_nodes_matches_the_local_pool",
        "test_reduce_on_two_nodes_matches_the_local_pool",
    },
    "test_read_once.py": {"test_the_dicom_reader_is_imported_once_before_the_workers_fork"},
    "test_readme.py": {
        "test_every_readme_command_runs", "test_readme_python_api_block",
    },
    "test_reduction_ray.py": {
        "test_a_local_ray_ends_with_the_command", "test_ray_backend_matches_local_pool",
        "test_ray_backend_sweeps_and_errors", "test_ray_export_matches_local_pool",
    },
    "test_reduction_run.py": {
        "test_a_single_large_series_is_read_by_every_worker_with_the_same_result",
        "test_one_bad_volume_never_stops_the_others", "test_output_inside_input_is_refused_and_inputs_are_untouched",
        "test_same_result_whatever_the_number_of_workers",
    },
    "test_reduction_scope.py": {
        "test_one_pass_export_follows_the_archive_decision", "test_scope_archive_from_the_command_line",
    },
    "test_reduction_similarity.py": {
        "test_numpy_ssim_keeps_the_torch_slices_of_the_real_cts",
    },
    "test_report.py": {
        "test_report_renders_in_chromium",
    },
    "test_rerun.py": {
        "test_a_bad_export_out_is_refused_before_any_volume_is_reduced",
        "test_a_damaged_export_is_rebuilt_by_the_rerun", "test_the_one_pass_export_is_ctreduce_export_row_for_row",
    },
    "test_ssl_moco.py": {
        "test_loss_decreases", "test_run_folder_records_the_queue",
    },
    "test_ssl_pretrain.py": {
        "test_a_paper_preset_run_records_every_resolved_setting", "test_a_run_records_how_long_it_waited_for_data",
        "test_ddp_on_cpu_every_rank_runs_the_cli_and_exits_0", "test_each_method_writes_the_run_folder",
        "test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",
        "test_other_settings_in_the_same_run_folder_are_refused", "test_rerun_resumes_from_the_stored_step",
        "test_same_seed_same_backbone_on_cpu", "test_swav_queue_is_restored_on_resume",
        "test_views_made_on_the_device_train_and_are_recorded",
    },
    "test_ssl_spark.py": {
        "test_loss_decreases_with_configured_optimiser", "test_one_step_matches_the_official_forward_and_update",
        "test_paper_preset_resolves_the_official_recipe",
    },
    "test_store.py": {
        "test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over",
        "test_a_series_that_gained_files_is_reduced_again_and_export_checks_first",
        "test_pool_workers_end_with_their_parent", "test_pretrain_refuses_an_interrupted_npy_export",
    },
    "test_store_disk.py": {
        "test_npy_export_on_a_disk_that_fills_is_one_line_and_resumes",
        "test_reduce_export_npy_on_a_disk_that_fills_resumes",
    },
    "test_store_locks.py": {
        "test_a_run_being_exported_cannot_be_replaced",
    },
    "test_verify.py": {
        "test_a_dropped_slice_rewritten_makes_the_decision_stale_and_its_volume_is_not_exported",
        "test_a_kept_slice_rewritten_in_place_is_not_exported_and_the_rerun_redoes_it",
        "test_a_single_large_series_read_in_chunks_is_verified_too",
        "test_one_pass_export_of_volumes_reduced_before_compares_them_first",
        "test_ray_export_and_rerun_compare_slices_too",
        "test_reduce_verify_reads_every_slice_and_redoes_a_volume_whose_stat_was_kept",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests listed in SLOW; a listed name that no test of a collected file has, or a listed file
    that does not exist, is an error (a renamed test or file would otherwise move to the quick tier
    unnoticed)."""
    found: dict[str, set[str]] = {}
    for item in items:
        name = getattr(item, "originalname", item.name)
        found.setdefault(item.path.name, set()).add(name)
        if name in SLOW.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
    stale = sorted(f"{file}::{name}" for file, names in found.items() for name in SLOW.get(file, set()) - names)
    here = Path(__file__).parent
    stale += sorted(f"{file} (no such file)" for file in SLOW if not (here / file).exists())
    selected = config.option.keyword or config.option.markexpr or any("::" in arg for arg in config.args)
    if stale and not selected:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {', '.join(stale)}")
