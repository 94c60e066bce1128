# Attention heatmaps (config `heatmaps`, shazam.heatmaps): one job per task, model and fold,
# drawing the slides it selects itself — a few of the fold's own test cases per class (the
# fold file exists only once the splits have run) and of each external cohort — plus any
# slides named in the config. The folder's index.tsv lists what was drawn; the reports read it.


rule heatmaps:
    input:
        model=layout.model_outputs()["model"],
        config=layout.model_outputs()["config"],
        fold=layout.FOLD,
        slides=config["slides"],
        labels=task_labels,
        features=heatmap_features,
        patches=heatmap_patches,
        cohorts=heatmap_cohort_files,
    output:
        report(
            directory(layout.HEATMAP_DIR),
            patterns=["{name}.png"],
            caption="../workflow/report/heatmaps.rst",
            category="{task}",
            subcategory="Heatmaps",
            labels={
                "task": "{task}",
                "model": "{model}",
                "fold": "{fold}",
                "file": "{name}",
            },
        ),
    log:
        "logs/heatmaps/{task}/{model}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/heatmaps/{task}/{model}/fold_{fold}.tsv"
    wildcard_constraints:
        task="|".join(SLIDE_TASKS) or "NO_SLIDE_TASK",
        model=r"[A-Za-z0-9_.+-]+",
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        version=SHAZAM_VERSION,
        model_dir=lambda wc, input: os.path.dirname(input.model),
        external=heatmap_external_args,
        # the patch geometry: our patch files where we tile, else the features' coords attrs
        patches=lambda wc: f"--patches {layout.PATCHES}" if TILES else "",
        chosen=heatmap_chosen_args,
        per_class=HEATMAPS["per_class"],
        top_k=HEATMAPS["top_k"],
        geojson="--geojson" if HEATMAPS["geojson"] else "",
    shell:
        "shazam heatmap --model-dir {params.model_dir} --out {output}"
        " --test-of {input.fold} --slides {input.slides:q} --labels {input.labels:q}"
        " {params.external} {params.chosen} {params.patches} --per-class {params.per_class}"
        " --top-k {params.top_k} {params.geojson} > {log} 2>&1"
