require_relative '../spec_helper'
require 'chef-cli/policyfile_compiler'

# The repository's Policyfile.rb, evaluated by chef-cli (what `chef install` does before it
# writes the lock), and the attribute hoisting Chef Infra Client applies on a node of a group.
describe 'Policyfile.rb' do
  path = File.join(BackupAgentSpec::REPO, 'Policyfile.rb')
  let(:policy) { ChefCLI::PolicyfileCompiler.evaluate(File.read(path), path) }
  groups = Dir[File.join(BackupAgentSpec::REPO, 'environments', '*.json')].map { |f| File.basename(f, '.json') }.sort

  it 'is valid and runs the default recipe of the local cookbook, from no Supermarket' do
    expect(policy.errors).to eq([])
    expect(policy.expanded_run_list.to_a.map(&:to_s)).to eq(['recipe[backup_agent::default]'])
    expect(policy.default_source.map(&:class).map(&:name)).to eq(['ChefCLI::Policyfile::NullCookbookSource'])
    expect(policy.cookbook_location_specs.keys).to eq(['backup_agent'])
  end

  it 'has one policy group per environment' do
    expect(policy.default_attributes.keys.sort).to eq(groups)
  end

  groups.each do |group|
    it "gives a node of policy group #{group} the attributes environments/#{group}.json gives" do
      node = Chef::Node.new
      node.policy_group = group
      # ChefSpec's SoloRunner leaves chef-solo mode set; a Policyfile node runs chef-client.
      allow(Chef::Config).to receive(:[]).and_call_original
      allow(Chef::Config).to receive(:[]).with(:solo_legacy_mode).and_return(false)
      builder = Chef::PolicyBuilder::Policyfile.new('n', {}, {}, nil, nil)
      allow(builder).to receive(:node).and_return(node)
      allow(builder).to receive(:policy).and_return(
        'default_attributes' => policy.default_attributes, 'override_attributes' => policy.override_attributes
      )
      builder.apply_policyfile_attributes
      expect(node['backup_agent'].to_hash).to eq(BackupAgentSpec.environment(group)['default_attributes']['backup_agent'])
    end
  end
end
