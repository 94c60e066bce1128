rule extract_features:
    input:
        patches="results/patches/{slide}.h5",
        slide=slide_path,
        weights=teacher_weights_input,
    output:
        "results/features/{teacher}/{slide}.h5",
    log:
        "logs/extract_features/{teacher}/{slide}.log",
    benchmark:
        "results/benchmarks/extract_features/{teacher}/{slide}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: config["extraction"]["num_workers"] + 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        weights=teacher_weights_param,
        extraction=cli_args("extraction"),
    shell:
        "shazam extract --teacher {wildcards.teacher} --slide {input.slide:q}"
        " --slide-id {wildcards.slide} --patches {input.patches} --out {output}"
        " --weights {params.weights:q} --threads {threads} {params.extraction}"
        " > {log} 2>&1"
