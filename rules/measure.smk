# runtime.shards = 1: one measure job per checkpoint. N > 1: Snakemake's scatter/gather splits it into N measure_shard
# jobs (each a slice of the batch plan, gpu=1 each; on Slurm each its own sbatch job) and one measure job that merges
# them into the same files (maxact.measurement.shards). Either way the measure rule makes the same outputs.

if SHARDS == 1:

    rule measure:
        """Forward hooks on the text backbone: per-component statistics, peaks and per-sample extremes."""
        input:
            prepared=rules.prepare_checkpoint.output.prepared,
            tokens=ckpt_tokens,
            manifest=rules.corpus.output.manifest,
        output:
            stats=f"{RESULTS}/measure/{{ckpt}}/activation_stats.json",
            per_sample=f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet",
            **measure_extra_outputs(),
        params:
            meta=ckpt_meta,
            measure=canonical(config["measure"]),
            tokens_group=ckpt_group,
        resources:
            gpu=ckpt_gpus,
        conda:
            "../environment.yml"
        log:
            f"{LOGS}/measure/{{ckpt}}.log",
        benchmark:
            f"{BENCH}/measure/{{ckpt}}.tsv"
        script:
            "../workflow_scripts/measure.py"

else:

    rule measure_shard:
        """One shard of a checkpoint's measurement: its slice of the batch plan, with its mergeable state."""
        input:
            prepared=rules.prepare_checkpoint.output.prepared,
            tokens=ckpt_tokens,
            manifest=rules.corpus.output.manifest,
        output:
            state=f"{RESULTS}/measure_shards/{{ckpt}}/{{scatteritem}}/shard_state.safetensors",
            info=f"{RESULTS}/measure_shards/{{ckpt}}/{{scatteritem}}/shard.json",
        params:
            meta=ckpt_meta,
            measure=canonical(config["measure"]),
            tokens_group=ckpt_group,
        resources:
            gpu=ckpt_gpus,
        conda:
            "../environment.yml"
        log:
            f"{LOGS}/measure_shard/{{ckpt}}/{{scatteritem}}.log",
        benchmark:
            f"{BENCH}/measure_shard/{{ckpt}}/{{scatteritem}}.tsv"
        script:
            "../workflow_scripts/measure.py"

    rule measure:
        """The checkpoint's shards merged into the files of an unsharded measurement (no GPU)."""
        input:
            shards=gather.shard(f"{RESULTS}/measure_shards/{{{{ckpt}}}}/{{scatteritem}}/shard.json"),
            prepared=rules.prepare_checkpoint.output.prepared,
        output:
            stats=f"{RESULTS}/measure/{{ckpt}}/activation_stats.json",
            per_sample=f"{RESULTS}/measure/{{ckpt}}/per_sample_extremes.parquet",
            **measure_extra_outputs(),
        params:  # the unsharded rule's params and script, so that a changed runtime.shards reruns nothing measured
            meta=ckpt_meta,
            measure=canonical(config["measure"]),
            tokens_group=ckpt_group,
        conda:
            "../environment.yml"
        log:
            f"{LOGS}/measure/{{ckpt}}.log",
        script:
            "../workflow_scripts/measure.py"
