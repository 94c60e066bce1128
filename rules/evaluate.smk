rule evaluate:
    input:
        predictions=lambda wc: model_files(wc.task, "predictions.csv"),
        metrics=lambda wc: model_files(wc.task, "metrics.json"),
        splits="results/splits/{task}/summary.tsv",
        labels=task_labels,
        slides=task_sheet,
        features=task_feature_samples,
    output:
        summary=report(
            "results/report/{task}/summary.tsv",
            caption="../workflow/report/summary.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "summary per model"},
        ),
        per_fold=report(
            "results/report/{task}/per_fold.tsv",
            caption="../workflow/report/per_fold.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "per fold"},
        ),
        comparison=report(
            "results/report/{task}/comparison.tsv",
            caption="../workflow/report/comparison.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "paired comparison"},
        ),
        dataset=report(
            "results/report/{task}/dataset.tsv",
            caption="../workflow/report/dataset.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "cases per fold and split"},
        ),
        markdown="results/report/{task}/report.md",
        html=report(
            "results/report/{task}/report.html",
            caption="../workflow/report/task_report.rst",
            category="{task}",
            subcategory="Report",
            labels={"task": "{task}", "file": "report"},
        ),
        figures=report(
            directory("results/report/{task}/figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="{task}",
            subcategory="Figures",
            labels={"task": "{task}", "figure": "{name}"},
        ),
    log:
        "logs/evaluate/{task}.log",
    benchmark:
        "results/benchmarks/evaluate/{task}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        models=lambda wc: ",".join(model_names(wc.task)),
        slides=lambda wc, input: f"--slides {input.slides}" if input.slides else "",
        teachers=",".join(TEACHERS),
        shazam=SHAZAM_JSON,
        evaluation=cli_args("evaluation"),
        models_dir=lambda wc: f"results/models/{wc.task}",
        splits_dir=lambda wc, input: os.path.dirname(input.splits),
        out_dir=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "shazam evaluate --spec {params.spec:q} {params.slides}"
        " --models {params.models} --teachers {params.teachers:q} {params.evaluation}"
        " --shazam {params.shazam:q} --models-dir {params.models_dir}"
        " --splits-dir {params.splits_dir} --out-dir {params.out_dir}"
        " --feature-files {input.features} > {log} 2>&1"
