"""docs/fidelity.md from the fidelity command's JSON: the table, the command, the machine and what the numbers mean."""

from __future__ import annotations


# -- docs/fidelity.md -----------------------------------------------------------------------------------------------
def _cell(value: float | None, digits: str = ".3g") -> str:
    return "-" if value is None else format(value, digits)


def render_markdown(data: dict) -> str:
    shape = data["shape"]
    machine = data["machine"]
    synthetic = data["bundle"].get("synthetic")
    lines = [
        "# Fidelity: what each speed-up costs against the reference flow",
        "",
        f"`{data['command']}`",
        "",
        f"{data['date']}; {machine['card']} ({machine['device']}, {machine['cpu_threads']} CPU threads), torch "
        f"{machine['torch']}; bundle: {'synthetic ' + str(data['bundle'].get('scale')) if synthetic else 'real'} "
        f"({data['bundle'].get('root')}); {shape['width']}x{shape['height']}x{shape['num_frames']}, "
        f"{shape['steps']} steps, seed {shape['seed']}; quantization {data['quantization']}, compute "
        f"{data['compute_dtype']}.",
        "",
        "Each row switches ONE speed-up of the fast flow on inside the reference flow (`--flow reference`, "
        "which renders ltx-pipelines' A2VidPipelineTwoStage bit for bit: the sanity row) and compares with the "
        "reference flow at the same residency, inputs and seed; the last row is the fast default request as a "
        "whole. Relative L2 error of the video latent after stage 1 and after stage 2 (`DecodedClip.stage_latents`), "
        "PSNR of the decoded frames (before the mp4). Seconds saved: the reference's elapsed seconds minus the "
        "variant's, each configuration run once to warm and then timed "
        f"({data['timed_runs']} timed run(s), the fastest), in a fresh engine per row: "
        "persistent rows time warm models, cold-start rows a warm page cache and the kept-as-built states.",
        "",
        "Random (synthetic) weights can exaggerate or hide errors: a random transformer amplifies or damps a small "
        "change unlike the trained one, and the tiny bundle's seconds are milliseconds of noise. The command runs "
        "unchanged on a real bundle (`--bundle DIR`, or the four path flags as for `generate`).",
        "",
        "| speed-up | seconds saved | stage-1 latent rel. error | final latent rel. error | PSNR vs reference | "
        "how it ran |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        if row["status"] != "measured":
            lines.append(f"| {row['speedup']} | - | - | - | - | {row['status']}: {row['reason']} |")
            continue
        ran = row["ran"]
        how = [row["residency"] if ran["flow"] != "stock" else "stock pipeline, builds per call"]
        if row["key"] == "stock":
            how.append("vs the reference flow, cold-start")
        if row["key"] == "default":
            how.append(
                f"{ran['quantization']}, text encoder {ran['text_encoder_quantization']}, LoRA {ran['stage_2_lora']}"
                + (", CUDA graphs" if ran.get("cuda_graphs") else "")
                + (", compiled blocks" if ran.get("compiled_blocks") else "")
            )
        if ran.get("compile_failures"):
            how.append(f"compile fell back to eager: {ran['compile_failures'][0]}")
        elif ran.get("stage_2_lora") and row["key"].startswith("lora"):
            how.append(f"LoRA {ran['stage_2_lora']}")
        if row["identical"]:
            how.append("identical frames and latents")
        psnr_cell = "inf (identical)" if row["identical"] else f"{row['psnr_db']:.2f} dB"
        lines.append(
            f"| {row['speedup']} | {row['seconds_saved']:+.3f} | {_cell(row.get('stage_1_latent_rel_l2'))} | "
            f"{_cell(row.get('final_latent_rel_l2'))} | {psnr_cell} | {'; '.join(how + row['notes'])} |"
        )
    reference = "; ".join(f"{mode} {ref['seconds']} s" for mode, ref in data["reference"].items())
    lines += [
        "",
        f"The reference flow took {reference} (timed, warm). int8 (optimum-quanto) has no row: it is not offered "
        "(docs/fidelity-int8.md).",
        "",
    ]
    busiest = max([*machine.get("load_average", [0]), *(r.get("load_average", 0) for r in data["rows"])])
    if busiest > (machine.get("cpu_cores") or 1):
        lines += [
            f"The machine was shared: its 1-minute load average reached {busiest} on {machine['cpu_cores']} cores "
            "(other processes), so the seconds above are mostly noise; the errors and PSNR do not depend on it.",
            "",
        ]
    if data["compute_dtype"] == "bfloat16" and data["machine"]["device"].startswith("cpu"):
        lines += [
            "bf16 compute on the CPU: the stock pipeline's dtype, so the reference equals it. The CPU default "
            "(float32, its row above) is not rounding but other noise: on the CPU `torch.randn` draws 16+ float32 "
            "values with another (vectorised) algorithm than bf16 ones, so the same seed gives another sample "
            "(docs/fidelity-differences.md measures float32 with the noise drawn in bf16: 41.6 dB).",
            "",
        ]
    return "\n".join(lines)
