# Every trained model of a task applied to each external cohort (config `external`): one job
# per task and cohort, which loads each model's folds in turn and writes one table per model
# (shazam.predict: each fold's outputs and the ensemble, a row per case or image). A slide
# cohort's slides come through tile_slide and extract_features like the training sheet's;
# a tile cohort's images through extract_external_tiles.
for task in TASKS:
    cohorts = [n for n, c in EXTERNAL.items() if task in c.tasks]
    if not cohorts:
        continue

    rule:
        name:
            f"predict_{task}"
        input:
            models=model_files(task, "model.safetensors")
            + model_files(task, "config.json"),
            features=lambda wc, task=task: cohort_features(wc.cohort, task),
            slides=lambda wc, task=task: cohort_sheet(wc.cohort, task),
            labels=lambda wc, task=task: cohort_labels(wc.cohort, task),
        output:
            [
                layout.PREDICTIONS.format(cohort="{cohort}", task=task, model=m)
                for m in model_names(task)
            ],
        log:
            f"logs/predict/{{cohort}}/{task}.log",
        benchmark:
            f"results/benchmarks/predict/{{cohort}}/{task}.tsv"
        wildcard_constraints:
            cohort="|".join(re.escape(c) for c in cohorts),
        conda:
            "../envs/shazam.yaml"
        threads: 1
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=60,
        params:
            version=SHAZAM_VERSION,
            spec=task_spec_json(task),
            models=" ".join(model_names(task)),
            runs=task_runs(task),
            # results/models/{task}: above {model}/fold_{k}/model.safetensors
            models_dir=lambda wc, input: Path(input.models[0]).parents[2],
            out=lambda wc, task=task: layout.PREDICTIONS.format(
                cohort=wc.cohort, task=task, model="{model}"
            ),
            data=lambda wc, input, task=task: predict_data(wc.cohort, task, input),
        shell:
            "shazam predict --spec {params.spec:q} --model {params.models}"
            " --runs {params.runs} --models-dir {params.models_dir} {params.data}"
            " --cohort {wildcards.cohort} --threads {threads} --out {params.out:q}"
            " > {log} 2>&1"


rule extract_external_tiles:
    input:
        images=lambda wc: EXTERNAL[wc.cohort].images[wc.task],
        weights=teacher_weights_input,
    output:
        layout.EXTERNAL_TILE_FEATURES,
    log:
        "logs/extract_external_tiles/{cohort}/{task}/{teacher}.log",
    benchmark:
        "results/benchmarks/extract_external_tiles/{cohort}/{task}/{teacher}.tsv"
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
        cohort="|".join(re.escape(n) for n, c in EXTERNAL.items() if c.images)
        or "NO_COHORT",
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
        extraction=section_json("extraction"),
    shell:
        "shazam extract-tiles --spec {params.spec:q} --images {input.images:q}"
        " --teacher {wildcards.teacher} --out {output} --weights {params.weights:q}"
        " --target-mpp {params.target_mpp} --threads {threads}"
        " --extraction {params.extraction:q} > {log} 2>&1"
