require_relative '../../spec_helper'

describe BackupAgentCookbook::ConfigBuilder do
  let(:secrets) { { 'bucket' => 'b', 'region' => 'us-east-1' } }

  def build(settings: {}, jobs: {}, resource_jobs: {}, secrets: self.secrets)
    described_class.build(settings: settings, jobs: jobs, resource_jobs: resource_jobs, secrets: secrets,
                          node_name: 'web-01', environment: 'production')
  end

  it 'renders only what is set: nil values and emptied sections are dropped' do
    settings = { 'log_level' => nil, 'aws' => {}, 'notify' => { 'healthchecks_url' => nil }, 'storage' => { 'sse' => nil } }
    expect(build(settings: settings)).to eq(
      'node' => 'web-01', 'environment' => 'production', 'storage' => { 'bucket' => 'b', 'region' => 'us-east-1' }
    )
  end

  it 'passes settings through under the config file\'s own keys, whatever they are' do
    settings = { 'log_format' => 'json', 'stop_timeout' => 120, 'notify' => { 'timeout' => 5 },
                 'storage' => { 'prefix' => 'fleet/web-01', 'concurrency' => 16 }, 'metrics' => { 'textfile' => '/m.prom' } }
    config = build(settings: settings)
    expect(config).to include('log_format' => 'json', 'stop_timeout' => 120, 'notify' => { 'timeout' => 5 },
                              'metrics' => { 'textfile' => '/m.prom' })
    expect(config['storage']).to eq('bucket' => 'b', 'prefix' => 'fleet/web-01', 'region' => 'us-east-1', 'concurrency' => 16)
  end

  it 'keeps false, zero and empty lists, which are real values' do
    jobs = { 'etc' => { 'type' => 'files', 'paths' => ['/etc'], 'exclude' => [], 'one_file_system' => false, 'splay' => 0 } }
    expect(build(jobs: jobs)['jobs']['etc']).to eq(jobs['etc'])
  end

  it 'sorts jobs by name and drops a job set to nil' do
    jobs = { 'zz' => { 'type' => 'files' }, 'aa' => { 'type' => 'files' }, 'gone' => nil }
    expect(build(jobs: jobs)['jobs'].keys).to eq(%w(aa zz))
  end

  it 'writes every job the same way wherever it came from: type first, then keys sorted' do
    from_attributes = build(jobs: { 'etc' => { 'schedule' => 'daily at 02:00', 'retention' => { 'keep_last' => 1, 'keep_daily' => 2 },
                                               'paths' => ['/etc'], 'type' => 'files' } })
    from_resource = build(resource_jobs: { 'etc' => { 'type' => 'files', 'paths' => ['/etc'], 'schedule' => 'daily at 02:00',
                                                      'retention' => { 'keep_daily' => 2, 'keep_last' => 1 } } })
    expect(described_class.dump(from_attributes)).to eq(described_class.dump(from_resource))
    expect(from_attributes['jobs']['etc'].keys).to eq(%w(type paths retention schedule))
  end

  it 'orders top-level and storage keys the same way every time' do
    secrets = { 'secret_access_key' => 's', 'access_key_id' => 'a', 'bucket' => 'b' }
    config = build(settings: { 'storage' => { 'prefix' => 'p' }, 'log_level' => 'INFO' }, secrets: secrets,
                   jobs: { 'etc' => { 'type' => 'files', 'paths' => ['/etc'] } })
    expect(config.keys).to eq(%w(node environment log_level storage jobs))
    expect(config['storage'].keys).to eq(%w(bucket prefix access_key_id secret_access_key))
  end

  it 'takes storage secrets from the data bag over anything in the settings' do
    config = build(settings: { 'storage' => { 'bucket' => 'from-attributes' } })
    expect(config['storage']['bucket']).to eq('b')
  end

  describe 'jobs from attributes and from backup_agent_job resources' do
    let(:resource_jobs) do
      { 'pg' => { 'type' => 'command', 'preset' => 'postgresql', 'database' => 'app', 'schedule' => 'daily at 01:00',
                  'retention' => { 'keep_daily' => 7 } } }
    end

    it 'end up in one jobs map' do
      config = build(jobs: { 'etc' => { 'type' => 'files', 'paths' => ['/etc'] } }, resource_jobs: resource_jobs)
      expect(config['jobs'].keys).to eq(%w(etc pg))
    end

    it 'merge key by key, the attributes over the resource (an environment tunes a wrapper\'s job)' do
      jobs = { 'pg' => { 'schedule' => 'every 6 hours', 'retention' => { 'keep_weekly' => 4 } } }
      expect(build(jobs: jobs, resource_jobs: resource_jobs)['jobs']['pg']).to eq(
        'type' => 'command', 'database' => 'app', 'preset' => 'postgresql',
        'retention' => { 'keep_daily' => 7, 'keep_weekly' => 4 }, 'schedule' => 'every 6 hours'
      )
    end

    it 'a resource :delete drops the job, attributes of the same name included' do
      jobs = { 'etc' => { 'type' => 'files', 'paths' => ['/etc'] } }
      expect(build(jobs: jobs, resource_jobs: { 'etc' => nil })).not_to have_key('jobs')
    end

    it 'a nil job in attributes drops a resource\'s job too' do
      expect(build(jobs: { 'pg' => nil }, resource_jobs: resource_jobs)).not_to have_key('jobs')
    end
  end

  describe 'job_secrets of the data bag item' do
    let(:secrets) do
      { 'bucket' => 'b',
        'job_secrets' => { 'pg' => { 'password' => 'pw', 'env' => { 'TOKEN' => 't' } }, 'other' => { 'password' => 'x' } } }
    end

    it 'go into the command job of the same name, env as secret_env (winning over the job\'s own)' do
      jobs = { 'pg' => { 'type' => 'command', 'command' => %w(pg_dump app), 'env' => { 'PGHOST' => 'db', 'TOKEN' => 'public' } } }
      expect(build(jobs: jobs)['jobs']['pg']).to eq(
        'type' => 'command', 'command' => %w(pg_dump app), 'env' => { 'PGHOST' => 'db' },
        'secret_env' => { 'TOKEN' => 't' }, 'password' => 'pw'
      )
    end

    it 'are not rendered for jobs this node does not have' do
      expect(described_class.dump(build(jobs: {}))).not_to include('x')
      expect(build(jobs: {})).not_to have_key('jobs')
    end

    it 'are refused for a job that is not a command job' do
      expect { build(jobs: { 'pg' => { 'type' => 'files', 'paths' => ['/srv'] } }) }.to raise_error(
        BackupAgentCookbook::ConfigError,
        "backup_agent: job_secrets.pg (password, env) of the data bag item is for job 'pg', which is a files job: " \
        'only command jobs take them'
      )
    end
  end

  it 'takes the notification URLs from the data bag item, beside the notify settings of attributes' do
    config = build(settings: { 'notify' => { 'timeout' => 5 } },
                   secrets: secrets.merge('notify' => { 'healthchecks_url' => 'https://hc.example/ping/u', 'webhook_url' => 'https://h.example/t' }))
    expect(config['notify']).to eq('timeout' => 5, 'healthchecks_url' => 'https://hc.example/ping/u', 'webhook_url' => 'https://h.example/t')
  end

  it 'dumps plain YAML without Ruby object tags, long values unfolded' do
    url = "https://hc.example/ping/#{'x' * 120}"
    yaml = described_class.dump(build(secrets: secrets.merge('notify' => { 'healthchecks_url' => url })))
    expect(yaml).not_to include('!ruby')
    expect(yaml).to include("healthchecks_url: #{url}\n")
    expect(YAML.safe_load(yaml)['notify']['healthchecks_url']).to eq(url)
  end

  it 'accepts node attribute objects' do
    attrs = Chef::Node::ImmutableMash.new('etc' => { 'type' => 'files', 'paths' => ['/etc'] })
    expect(build(jobs: attrs)['jobs']).to eq('etc' => { 'type' => 'files', 'paths' => ['/etc'] })
  end
end
