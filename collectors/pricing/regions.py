"""AWS region codes to the location names the AWS Pricing API filters on.

The Pricing API's ``location`` attribute is a display name ("US East (N. Virginia)"),
not the region code a node's ``topology.kubernetes.io/region`` label carries. The
names below are the ones the Price List files use (note "EU (Ireland)", not "Europe").
A region missing here is still priced: :func:`location_filter` falls back to the
``regionCode`` attribute, which newer price lists also carry.
"""

from __future__ import annotations

AWS_LOCATIONS: dict[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "af-south-1": "Africa (Cape Town)",
    "ap-east-1": "Asia Pacific (Hong Kong)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-south-2": "Asia Pacific (Hyderabad)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "ap-southeast-3": "Asia Pacific (Jakarta)",
    "ap-southeast-4": "Asia Pacific (Melbourne)",
    "ap-southeast-5": "Asia Pacific (Malaysia)",
    "ap-southeast-7": "Asia Pacific (Thailand)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-northeast-3": "Asia Pacific (Osaka)",
    "ca-central-1": "Canada (Central)",
    "ca-west-1": "Canada West (Calgary)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-central-2": "EU (Zurich)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)",
    "eu-south-1": "EU (Milan)",
    "eu-south-2": "EU (Spain)",
    "eu-north-1": "EU (Stockholm)",
    "il-central-1": "Israel (Tel Aviv)",
    "me-south-1": "Middle East (Bahrain)",
    "me-central-1": "Middle East (UAE)",
    "mx-central-1": "Mexico (Central)",
    "sa-east-1": "South America (Sao Paulo)",
    "us-gov-east-1": "AWS GovCloud (US-East)",
    "us-gov-west-1": "AWS GovCloud (US-West)",
}


def aws_location(region: str) -> str | None:
    """The Pricing API location name of an AWS region code, or None if unknown."""
    return AWS_LOCATIONS.get(region)


def location_filter(region: str) -> dict[str, str]:
    """The get_products filter that selects ``region``: by location name when we know it."""
    name = aws_location(region)
    if name is not None:
        return {"Type": "TERM_MATCH", "Field": "location", "Value": name}
    return {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}
