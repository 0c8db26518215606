# Policyfile for backup_agent: the Policyfile workflow beside the environments one (README.md,
# "Policyfiles"). One policy, one policy group per environment of environments/*.json.
#
#   chef install                                  # or chef-cli install: writes Policyfile.lock.json
#   chef export Policyfile.lock.json DIR          # or a repo for chef-client -z (no server)
#   chef push staging                             # the lock into policy group `staging`
#   knife node policy set NODE staging backup_agent
#
# Per-group attributes: Chef Infra Client (18 here) hoists role-level attributes
# under default[<policy_group>] / override[<policy_group>] to the top on the nodes of that group,
# so each environment's attributes are copied here under its name and a node in group `staging`
# gets exactly what environments/staging.json gives a node in environment staging (at role
# precedence instead of environment precedence). The data bag item is chosen by policy group
# too (backup_agent/<policy_group>, then default), and the config's `environment` is the group
# (Chef 18 also sets the node's chef_environment to it). tests/converge/test_policyfile.py
# converges this file's lock in groups staging and production.

name 'backup_agent'
# No default_source: the cookbook has no dependencies, so nothing is fetched from a Supermarket.
run_list 'backup_agent::default'
cookbook 'backup_agent', path: 'cookbooks/backup_agent'

Dir[File.join(__dir__, 'environments', '*.json')].sort.each do |file|
  environment = JSON.parse(File.read(file))
  group = environment.fetch('name')
  default[group] = environment.fetch('default_attributes', {})
  overrides = environment.fetch('override_attributes', {})
  override[group] = overrides unless overrides.empty?
end
