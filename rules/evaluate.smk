rule evaluate:
    input:
        predictions=lambda wc: model_files(wc.task, "predictions.csv"),
        metrics=lambda wc: model_files(wc.task, "metrics.json"),
        splits=layout.SPLITS_SUMMARY,
        labels=task_labels,
        slides=lambda wc: task_sheet(wc.task),
        features=task_feature_samples,
        heatmaps=lambda wc: task_heatmaps(wc.task),
    output:
        summary=report(
            f"{layout.REPORT_DIR}/summary.tsv",
            caption="../workflow/report/summary.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "summary per model"},
        ),
        per_fold=report(
            f"{layout.REPORT_DIR}/per_fold.tsv",
            caption="../workflow/report/per_fold.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "per fold"},
        ),
        comparison=report(
            f"{layout.REPORT_DIR}/comparison.tsv",
            caption="../workflow/report/comparison.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "paired comparison"},
        ),
        dataset=report(
            f"{layout.REPORT_DIR}/dataset.tsv",
            caption="../workflow/report/dataset.rst",
            category="{task}",
            subcategory="Tables",
            labels={"task": "{task}", "table": "cases per fold and split"},
        ),
        markdown=f"{layout.REPORT_DIR}/report.md",
        html=report(
            layout.REPORT_HTML,
            caption="../workflow/report/task_report.rst",
            category="{task}",
            subcategory="Report",
            labels={"task": "{task}", "file": "report"},
        ),
        figures=report(
            directory(f"{layout.REPORT_DIR}/figures"),
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
        evaluation=section_json("evaluation"),
        seeds=",".join(map(str, SEEDS)),
        models_dir=lambda wc: layout.MODELS_DIR.format(task=wc.task),
        splits_dir=lambda wc, input: os.path.dirname(input.splits),
        out_dir=lambda wc, output: os.path.dirname(output.summary),
        heatmaps=lambda wc, input: (
            "--heatmaps " + " ".join(f"{d}/index.tsv" for d in input.heatmaps)
            if input.heatmaps
            else ""
        ),
    shell:
        "shazam evaluate --spec {params.spec:q} {params.slides}"
        " --models {params.models} --teachers {params.teachers:q}"
        " --evaluation {params.evaluation:q} --seeds {params.seeds}"
        " --shazam {params.shazam:q} --models-dir {params.models_dir}"
        " --splits-dir {params.splits_dir} --out-dir {params.out_dir}"
        " --feature-files {input.features} {params.heatmaps} > {log} 2>&1"
