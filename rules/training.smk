# One model on one fold: the slide models (one rule per role, so that a cluster profile can size
# them apart) and the tile models; every rule is the same `shazam train` call.
SLIDE_TRAINING = {
    # rule: (model name or wildcard pattern, the feature files it reads)
    "train_baseline": ("abmil-{teacher}", lambda wc: TEACHER_FEATURES[wc.teacher]),
    "train_fusion": ("concat", ALL_FEATURES),
    "train_shazam": ("{shazam_model}", ALL_FEATURES),
}

for rule_name, (model, features) in SLIDE_TRAINING.items():

    rule:
        name:
            rule_name
        input:
            fold=layout.FOLD,
            slides=config["slides"],
            labels=task_labels,
            features=features,
        output:
            **model_outputs(model),
        log:
            f"logs/{rule_name}/{{task}}/{model}/fold_{{fold}}.log",
        benchmark:
            f"results/benchmarks/{rule_name}/{{task}}/{model}/fold_{{fold}}.tsv"
        # the fused models take longest: they go first, so no long job trails at the end
        priority: 0 if rule_name == "train_baseline" else 1
        conda:
            "../envs/shazam.yaml"
        # one thread: a CPU-only run trains folds side by side (the job is mostly start-up
        # on a small cohort); on a GPU the CPU threads do not limit training
        threads: 1
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=60,
            # training.cache: where features are read from, i.e. how much memory the job
            # takes; a resource, not a param: it changes no result, so no rerun
            feature_cache=TRAIN_CACHE,
        params:
            version=SHAZAM_VERSION,
            model=lambda wc, model=model: model.format(**wc),
            spec=lambda wc: task_spec_json(wc.task),
            train=train_json,
            shazam=SHAZAM_JSON,
            teachers=",".join(TEACHERS),
            out_dir=lambda wc, output: os.path.dirname(output.metrics),
        shell:
            "shazam train --model {params.model} --spec {params.spec:q}"
            " --train {params.train:q} --shazam {params.shazam:q} --fold-csv {input.fold}"
            " --slides {input.slides} --teachers {params.teachers} --out-dir {params.out_dir}"
            " --threads {threads} --cache {resources.feature_cache} > {log} 2>&1"


rule train_tile_model:
    input:
        fold=layout.FOLD,
        features=tile_model_features,
    output:
        **model_outputs("{tile_model}"),
    log:
        "logs/train_tile_model/{task}/{tile_model}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_tile_model/{task}/{tile_model}/fold_{fold}.tsv"
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
    conda:
        "../envs/shazam.yaml"
    threads: 1  # one small vector per image: the model is tiny, the job mostly start-up
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
        feature_cache=TRAIN_CACHE,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        train=train_json,
        tile_train=TILE_TRAIN_JSON,
        shazam=SHAZAM_JSON,
        teachers=",".join(TEACHERS),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam train --model {wildcards.tile_model} --spec {params.spec:q}"
        " --train {params.train:q} --tile-train {params.tile_train:q}"
        " --shazam {params.shazam:q} --fold-csv {input.fold} --teachers {params.teachers}"
        " --out-dir {params.out_dir} --threads {threads} --cache {resources.feature_cache} > {log} 2>&1"
