"""Which of transformers' fast paths the batch engine says it runs, read from the manager's resolved config,
and the warning a GPU without flash attention gets."""

from __future__ import annotations

from types import SimpleNamespace

from structlog.testing import capture_logs

from qwen_chat.engine.core.fast_paths import running, warn_if_slow


def _manager(graphs: object, asynchronous: bool, pages: int) -> SimpleNamespace:
    config = SimpleNamespace(
        use_cuda_graph=graphs, use_async_batching=asynchronous, max_blocks_per_request=pages
    )
    return SimpleNamespace(continuous_batching_config=config)


def test_the_resolved_config_says_which_fast_paths_run() -> None:
    assert running(_manager((False, False), False, 0)) == []  # what the service asks for today
    assert running(_manager((False, True), True, 122)) == ["cuda_graphs", "async_batching", "decode_kernel"]
    assert running(_manager(True, False, 0)) == ["cuda_graphs"]  # before the manager made it a pair


def test_a_gpu_without_flash_attention_is_a_loud_warning_once() -> None:
    with capture_logs() as logs:
        warn_if_slow("cuda", "paged|sdpa")
        warn_if_slow("cuda", "paged|flash_attention_2")
        warn_if_slow("cpu", "sdpa")
    assert [(entry["event"], entry["log_level"], entry["attention"]) for entry in logs] == [
        ("gpu_without_flash_attention", "warning", "paged|sdpa")
    ]
