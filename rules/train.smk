rule train_baseline:
    input:
        fold="results/splits/{task}/fold_{fold}.csv",
        slides=config["slides"],
        labels=task_labels,
        features=lambda wc: TEACHER_FEATURES[wc.teacher],
    output:
        **model_outputs("abmil-{teacher}"),
    log:
        "logs/train_baseline/{task}/abmil-{teacher}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_baseline/{task}/abmil-{teacher}/fold_{fold}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        train=TRAIN_JSON,
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam train --model abmil-{wildcards.teacher} --spec {params.spec:q}"
        " --train {params.train:q} --fold-csv {input.fold} --slides {input.slides}"
        " --teachers {wildcards.teacher} --out-dir {params.out_dir} --threads {threads}"
        " > {log} 2>&1"


rule train_fusion:
    input:
        fold="results/splits/{task}/fold_{fold}.csv",
        slides=config["slides"],
        labels=task_labels,
        features=ALL_FEATURES,
    output:
        **model_outputs("concat"),
    log:
        "logs/train_fusion/{task}/concat/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_fusion/{task}/concat/fold_{fold}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        train=TRAIN_JSON,
        teachers=",".join(TEACHERS),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam train --model concat --spec {params.spec:q}"
        " --train {params.train:q} --fold-csv {input.fold} --slides {input.slides}"
        " --teachers {params.teachers} --out-dir {params.out_dir} --threads {threads}"
        " > {log} 2>&1"


rule train_shazam:
    input:
        fold="results/splits/{task}/fold_{fold}.csv",
        slides=config["slides"],
        labels=task_labels,
        features=ALL_FEATURES,
    output:
        **model_outputs("{shazam_model}"),
    log:
        "logs/train_shazam/{task}/{shazam_model}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_shazam/{task}/{shazam_model}/fold_{fold}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        train=TRAIN_JSON,
        shazam=SHAZAM_JSON,
        teachers=",".join(TEACHERS),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam train --model {wildcards.shazam_model} --spec {params.spec:q}"
        " --train {params.train:q} --shazam {params.shazam:q} --fold-csv {input.fold}"
        " --slides {input.slides} --teachers {params.teachers} --out-dir {params.out_dir}"
        " --threads {threads} > {log} 2>&1"
