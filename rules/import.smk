# Imported teachers (config `teachers: [{name, features, format}]`, shazam.imports): features
# that TRIDENT, CLAM or another run already extracted. One job per (teacher, slide) checks the
# slide's file (width; the patch grid where the run also tiles) and makes its feature file: a
# link to a contiguous source, else (TRIDENT's and CLAM's chunked .h5, a CLAM .pt) our own
# contiguous file, written once, so that training maps it. The source is the job's input, so
# replacing one file redoes that slide's import and what reads it; nothing is extracted.


rule import_features:
    input:
        unpack(import_inputs),
    output:
        layout.FEATURES,
    log:
        "logs/import_features/{teacher}/{slide}.log",
    wildcard_constraints:
        teacher=IMPORTED_RE,
    priority: 2
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
        format=lambda wc: IMPORTED[wc.teacher].format,
        reference=lambda wc: IMPORT_REFERENCE[wc.teacher],
        source=lambda wc, input: first_or_none(input.source),
        coords=lambda wc, input: first_or_none(input.coords),
        grid=lambda wc, input: first_or_none(input.grid),
    shell:
        "shazam import-features --teacher {wildcards.teacher} --slide-id {wildcards.slide}"
        " --format {params.format} --source {params.source:q} --coords {params.coords:q}"
        " {params.reference} --grid {params.grid:q} --out {output} > {log} 2>&1"
