"""Downstream classification tasks as data, without torch: train/val/test splits of (image, label) from local files.

Three formats, as used in the paper's downstream evaluation (Wolf et al. 2024):

* :func:`.covid_ct.load_covid_ct`: COVID-CT in the layout of its public release (UCSD-AI4H/COVID-CT);
* :func:`.medmnist.load_medmnist`: a MedMNIST v2/v3 ``.npz`` (OrganSMNIST by default);
* :func:`.folder.load_image_folder`: class sub-folders of PNG/JPEG/DICOM images, split by a CSV, by
  ``train/val/test`` folders or at random (stratified, seeded).

A task spec is a dict such as ``{"format": "medmnist", "path": "x.npz"}``: :mod:`.spec` checks it without
reading data (:func:`.spec.check_task_spec`) and makes one from a path given on the command line
(:func:`.spec.task_spec_for`); :func:`.load.load_task` loads it into a validated :class:`.data.DownstreamData`.
Fine-tuning (``ctreduce.downstream``) and the leakage search (``ctreduce.curate``) both read tasks here.
Images are read eagerly into memory (COVID-CT: ~750 images; OrganSMNIST: 25k of 28x28).
"""
