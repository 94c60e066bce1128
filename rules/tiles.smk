# Tile-level (ROI) tasks: image datasets with one label per image. Per task and teacher one
# feature file; folds per task; per-teacher MLP, concat-mlp and the v1 Shazam classifier per
# fold, trained by the same engine and written like the slide models.


rule extract_tile_features:
    input:
        images=lambda wc: tile_images(wc.task),
        weights=teacher_weights_input,
    output:
        "results/tile_features/{task}/{teacher}.h5",
    log:
        "logs/extract_tile_features/{task}/{teacher}.log",
    benchmark:
        "results/benchmarks/extract_tile_features/{task}/{teacher}.tsv"
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
    conda:
        "../envs/shazam.yaml"
    threads: config["extraction"]["num_workers"] + 1
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        weights=teacher_weights_param,
        target_mpp=config["tiling"]["target_mpp"],
        extraction=cli_args("extraction"),
    shell:
        "shazam extract-tiles --spec {params.spec:q} --teacher {wildcards.teacher}"
        " --out {output} --weights {params.weights:q} --target-mpp {params.target_mpp}"
        " --threads {threads} {params.extraction} > {log} 2>&1"


rule export_tile_pt:
    input:
        "results/tile_features/{task}/{teacher}.h5",
    output:
        "results/tile_features/{task}/{teacher}.pt",
    log:
        "logs/export_tile_pt/{task}/{teacher}.log",
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
    shell:
        "shazam export-pt --features {input} --out {output} > {log} 2>&1"


# One make_splits_<task> rule per tile task, as for slide tasks (same CLI, no slide sheet).
for task in TILE_TASKS:

    rule:
        name:
            f"make_splits_{task}"
        input:
            images=tile_images(task),
            imported=tile_split_inputs(task),
        output:
            folds=expand(
                f"results/splits/{task}/fold_{{k}}.csv", k=range(task_folds(task))
            ),
            summary=f"results/splits/{task}/summary.tsv",
        log:
            f"logs/make_splits/{task}.log",
        benchmark:
            f"results/benchmarks/make_splits/{task}.tsv"
        localrule: True
        conda:
            "../envs/shazam.yaml"
        params:
            version=SHAZAM_VERSION,
            spec=task_spec_json(task),
            out_dir=lambda wildcards, output: os.path.dirname(output.summary),
        shell:
            "shazam splits --spec {params.spec:q} --out-dir {params.out_dir} > {log} 2>&1"


rule train_tile_model:
    input:
        fold="results/splits/{task}/fold_{fold}.csv",
        features=tile_model_features,
    output:
        **model_outputs("{tile_model}"),
    log:
        "logs/train_tile_model/{task}/{tile_model}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_tile_model/{task}/{tile_model}/fold_{fold}.tsv"
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
        tile_model="|".join(tile_model_names(TEACHERS, ["shazam-nodistill"])),
    conda:
        "../envs/shazam.yaml"
    threads: 1  # one small vector per image: the model is tiny, the job mostly start-up
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        train=TRAIN_JSON,
        tile_train=TILE_TRAIN_JSON,
        shazam=SHAZAM_JSON,
        teachers=",".join(TEACHERS),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam train --model {wildcards.tile_model} --spec {params.spec:q}"
        " --train {params.train:q} --tile-train {params.tile_train:q}"
        " --shazam {params.shazam:q} --fold-csv {input.fold} --teachers {params.teachers}"
        " --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
