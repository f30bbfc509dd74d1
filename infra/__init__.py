"""The medsearch AWS CDK app: one Construct per concern, names from :mod:`medsearch.constants`."""
