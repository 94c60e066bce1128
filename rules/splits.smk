# One make_splits_<task> rule per task (slide or tile): a task's fold count fixes its outputs.
for task in TASKS:

    rule:
        name:
            f"make_splits_{task}"
        input:
            source=task_source(task),
            slides=task_sheet(task),
            imported=task_split_inputs(task),
        output:
            folds=[
                layout.FOLD.format(task=task, fold=k) for k in range(task_folds(task))
            ],
            summary=layout.SPLITS_SUMMARY.format(task=task),
        log:
            f"logs/make_splits/{task}.log",
        benchmark:
            f"results/benchmarks/make_splits/{task}.tsv"
        # a split of a second unlocks every training job of the task: never let it wait
        priority: 2
        localrule: True
        conda:
            "../envs/shazam.yaml"
        params:
            version=SHAZAM_VERSION,
            spec=task_spec_json(task),
            slides=lambda wildcards, input: (
                f"--slides {input.slides}" if input.slides else ""
            ),
            out_dir=lambda wildcards, output: os.path.dirname(output.summary),
        shell:
            "shazam splits --spec {params.spec:q} {params.slides}"
            " --out-dir {params.out_dir} > {log} 2>&1"
