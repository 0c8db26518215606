require_relative '../../spec_helper'

describe BackupAgentCookbook::ConfigBuilder do
  let(:secrets) { { 'bucket' => 'b', 'region' => 'us-east-1' } }

  def build(settings: {}, jobs: {}, secrets: self.secrets)
    described_class.build(settings: settings, jobs: jobs, secrets: secrets, node_name: 'web-01', environment: 'production')
  end

  it 'renders only what is set: nil values and emptied sections are dropped' do
    expect(build(settings: { 'log_level' => nil, 'aws' => {}, 'healthchecks_url' => nil })).to eq(
      'node' => 'web-01', 'environment' => 'production', 'storage' => { 'bucket' => 'b', 'region' => 'us-east-1' }
    )
  end

  it 'keeps false, zero and empty lists, which are real values' do
    jobs = { 'etc' => { 'type' => 'files', 'paths' => ['/etc'], 'exclude' => [], 'one_file_system' => false, 'splay' => 0 } }
    expect(build(jobs: jobs)['jobs']['etc']).to eq(jobs['etc'])
  end

  it 'sorts jobs by name and drops a job set to nil' do
    jobs = { 'zz' => { 'type' => 'files' }, 'aa' => { 'type' => 'files' }, 'gone' => nil }
    expect(build(jobs: jobs)['jobs'].keys).to eq(%w(aa zz))
  end

  it 'orders storage keys the same way every time' do
    secrets = { 'secret_access_key' => 's', 'access_key_id' => 'a', 'bucket' => 'b' }
    storage = build(settings: { 'prefix' => 'p' }, secrets: secrets)['storage']
    expect(storage.keys).to eq(%w(bucket prefix access_key_id secret_access_key))
  end

  it 'dumps plain YAML without Ruby object tags, long values unfolded' do
    url = "https://hc.example/ping/#{'x' * 120}"
    yaml = described_class.dump(build(settings: { 'healthchecks_url' => url }))
    expect(yaml).not_to include('!ruby')
    expect(yaml).to include("healthchecks_url: #{url}\n")
    expect(YAML.safe_load(yaml)['notify']['healthchecks_url']).to eq(url)
  end

  it 'accepts node attribute objects' do
    attrs = Chef::Node::ImmutableMash.new('etc' => { 'type' => 'files', 'paths' => ['/etc'] })
    expect(build(jobs: attrs)['jobs']).to eq('etc' => { 'type' => 'files', 'paths' => ['/etc'] })
  end
end
