require_relative '../../spec_helper'

describe 'backup_agent_job' do
  include_context 'with backup_agent data bag'

  step_into :backup_agent_job
  platform 'debian', '12'

  let(:environment) { 'staging' }
  let(:chef_runner) do
    ChefSpec::SoloRunner.new(chef_runner_options) { |node| node.chef_environment = environment }
  end
  let(:config) { BackupAgentSpec.rendered_config(chef_run) }

  context 'declaring one job of each type after the cookbook\'s recipes' do
    wrapper_recipe do
      include_recipe 'backup_agent::config'

      backup_agent_job 'srv' do
        type 'files'
        paths %w(/srv/data)
        exclude %w(*.tmp)
        one_file_system false
        schedule 'daily at 03:00'
        retention('keep_daily' => 7, 'keep_weekly' => 4)
        storage_class 'STANDARD_IA'
        drill('schedule' => 'weekly on sunday at 05:00', 'sample_files' => 10)
      end

      backup_agent_job 'pg' do
        type 'command'
        preset 'postgresql'
        database 'app'
        host '127.0.0.1'
        port 5432
        username 'backup'
        env('PGSSLMODE' => 'disable')
        schedule 'every 6 hours'
        compression 'zstd'
      end

      backup_agent_job 'volumes' do
        type 'ebs_snapshot'
        volumes 'all'
        exclude_root true
        tags('team' => 'ops')
        freeze_paths %w(/data)
        schedule 'weekly on sunday at 04:00 UTC'
        retention('keep_last' => 4)
      end
    end

    it 'renders each one under its name, with the config file\'s keys (freeze_paths as freeze)' do
      expect(config['jobs']['srv']).to eq(
        'type' => 'files', 'exclude' => ['*.tmp'], 'one_file_system' => false, 'paths' => ['/srv/data'],
        'retention' => { 'keep_daily' => 7, 'keep_weekly' => 4 }, 'schedule' => 'daily at 03:00', 'storage_class' => 'STANDARD_IA',
        'drill' => { 'schedule' => 'weekly on sunday at 05:00', 'sample_files' => 10 }
      )
      expect(config['jobs']['volumes']).to eq(
        'type' => 'ebs_snapshot', 'exclude_root' => true, 'freeze' => ['/data'], 'retention' => { 'keep_last' => 4 },
        'schedule' => 'weekly on sunday at 04:00 UTC', 'tags' => { 'team' => 'ops' }, 'volumes' => 'all'
      )
    end

    it 'merges the data bag\'s job_secrets into the command job of the same name' do
      secrets = BackupAgentSpec.plain_item('staging')['job_secrets']['pg']
      expect(config['jobs']['pg']).to eq(
        'type' => 'command', 'compression' => 'zstd', 'database' => 'app', 'host' => '127.0.0.1',
        'env' => { 'PGSSLMODE' => 'disable' }, 'secret_env' => { 'BACKUP_TEST_TOKEN' => secrets['env']['BACKUP_TEST_TOKEN'] },
        'password' => secrets['password'], 'port' => 5432, 'preset' => 'postgresql', 'schedule' => 'every 6 hours',
        'username' => 'backup'
      )
    end

    it 'keeps the attribute jobs of the environment next to them, in one config' do
      expect(config['jobs'].keys).to eq(%w(app etc pg srv volumes))
      expect(config['jobs']['etc']).to eq(BackupAgentSpec.environment_jobs('staging')['etc'])
    end

    it 'counts as updated on a node without a config yet: each job is new there' do
      %w(srv pg volumes).each do |name|
        resource = chef_run.backup_agent_job(name)
        expect(resource).to be_performed_action(:create)
        expect(resource.updated_by_last_action?).to be true
      end
    end

    it 'renders the config once, at the end of the run, after every job resource' do
      names = chef_run.resource_collection.map(&:to_s)
      expect(names.index(BackupAgentSpec::CONFIG_TEMPLATE)).to be < names.index('backup_agent_job[srv]')
      expect(chef_run.template(BackupAgentSpec::CONFIG_PATH).action).to eq([:nothing])
      expect(chef_run).to create_template(BackupAgentSpec::CONFIG_PATH)
    end

    it 'leaves no secret in node attributes or in any resource that is not sensitive' do
      attributes = JSON.generate(chef_run.node.attributes.to_hash)
      exposed = chef_run.resource_collection.reject(&:sensitive).map(&:to_text).join("\n")
      BackupAgentSpec.secret_values.each do |secret|
        expect(attributes).not_to include(secret)
        expect(exposed).not_to include(secret)
      end
    end
  end

  # What a wrapper's `notifies` on a backup_agent_job does: the resource is updated exactly
  # when its job in the config file changes (it used to be never, so notifications never fired).
  context 'with a notification on the job, against the config file now on disk' do
    step_into :backup_agent_job

    def converge_with(schedule, on_disk)
      allow(BackupAgentCookbook).to receive(:read_file).and_return(nil)
      allow(BackupAgentCookbook).to receive(:read_file).with(BackupAgentSpec::CONFIG_PATH).and_return(on_disk)
      runner = ChefSpec::SoloRunner.new(platform: 'debian', version: '12', step_into: ['backup_agent_job']) do |node|
        node.chef_environment = 'staging'
      end
      runner.converge('backup_agent::install') do
        Chef::Recipe.new('wrapper', 'default', runner.run_context).instance_exec do
          include_recipe 'backup_agent::config'
          execute 'restart app replica' do
            command %w(true)
            action :nothing
          end
          backup_agent_job 'pg' do
            type 'command'
            preset 'postgresql'
            database 'app'
            schedule schedule
            notifies :run, 'execute[restart app replica]', :delayed
          end
        end
      end
    end

    # The config a first run renders: the job (with the item's job secrets) as it is on disk now.
    let(:rendered) do
      run = converge_with('daily at 01:00', nil)
      ChefSpec::Renderer.new(run, run.template(BackupAgentSpec::CONFIG_PATH)).content
    end

    it 'fires when the job\'s schedule changes' do
      on_disk = rendered
      run = converge_with('daily at 02:00', on_disk)
      expect(run.backup_agent_job('pg').updated_by_last_action?).to be true
      expect(run).to run_execute('restart app replica')
    end

    it 'does not fire when the job is unchanged (secrets from the data bag item included)' do
      on_disk = rendered
      expect(YAML.safe_load(on_disk)['jobs']['pg']).to include('password', 'schedule' => 'daily at 01:00')
      run = converge_with('daily at 01:00', on_disk)
      expect(run.backup_agent_job('pg').updated_by_last_action?).to be false
      expect(run).not_to run_execute('restart app replica')
    end

    it 'fires on :delete only when the file has the job' do
      on_disk = rendered
      allow(BackupAgentCookbook).to receive(:read_file).and_return(nil)
      allow(BackupAgentCookbook).to receive(:read_file).with(BackupAgentSpec::CONFIG_PATH).and_return(on_disk)
      runner = ChefSpec::SoloRunner.new(platform: 'debian', version: '12', step_into: ['backup_agent_job']) { |n| n.chef_environment = 'staging' }
      run = runner.converge('backup_agent::install') do
        Chef::Recipe.new('wrapper', 'default', runner.run_context).instance_exec do
          include_recipe 'backup_agent::config'
          backup_agent_job('pg') { action :delete }
          backup_agent_job('never-there') { action :delete }
        end
      end
      expect(run.backup_agent_job('pg').updated_by_last_action?).to be true
      expect(run.backup_agent_job('never-there').updated_by_last_action?).to be false
    end
  end

  context 'declared before the cookbook\'s recipes' do
    wrapper_recipe do
      backup_agent_job 'early' do
        type 'files'
        paths %w(/opt)
      end
      include_recipe 'backup_agent::config'
    end

    it 'lands in the same config' do
      expect(config['jobs']['early']).to eq('type' => 'files', 'paths' => ['/opt'])
    end
  end

  context 'with :delete' do
    wrapper_recipe do
      include_recipe 'backup_agent::config'
      backup_agent_job 'app' do
        action :delete
      end
    end

    it 'takes the job out of the config, even one the environment\'s attributes define' do
      expect(config['jobs'].keys).to eq(%w(etc))
      expect(chef_run).to delete_backup_agent_job('app')
    end
  end

  context 'with attributes of the same name' do
    override_attributes['backup_agent']['jobs']['pg'] = { 'schedule' => 'daily at 05:00', 'retention' => { 'keep_daily' => 30 } }

    wrapper_recipe do
      include_recipe 'backup_agent::config'
      backup_agent_job 'pg' do
        type 'command'
        command %w(pg_dump -Fc app)
        schedule 'every 6 hours'
        retention('keep_last' => 2)
      end
    end

    it 'takes the resource as the base and the attributes over it, key by key' do
      expect(config['jobs']['pg']).to include('type' => 'command', 'command' => %w(pg_dump -Fc app),
                                              'schedule' => 'daily at 05:00',
                                              'retention' => { 'keep_daily' => 30, 'keep_last' => 2 })
    end
  end

  context 'a job that ends up without a type' do
    override_attributes['backup_agent']['jobs']['pg'] = { 'schedule' => 'daily at 05:00' }

    wrapper_recipe do
      include_recipe 'backup_agent::config'
    end

    # ChefSpec does not run the template provider: rendering is where the check happens.
    it 'fails before the file is written, naming both places a type could come from' do
      expect { BackupAgentSpec.rendered_config(chef_run) }.to raise_error(
        BackupAgentCookbook::ConfigError,
        "backup_agent: /etc/backup-agent/config.yaml is left unchanged:\n  jobs.pg.type: missing: one of files, command, " \
        "ebs_snapshot (from node['backup_agent']['jobs']['pg'] and/or backup_agent_job[pg])"
      )
    end
  end

  context 'when a resource fails before the end of the run' do
    step_into :ruby_block

    wrapper_recipe do
      include_recipe 'backup_agent::config'
      ruby_block 'boom' do
        block { raise 'boom' }
      end
      backup_agent_job 'late' do
        type 'files'
        paths %w(/late)
      end
    end

    it 'does not render a config that would lack the jobs declared after the failure' do
      allow(Chef::Log).to receive(:warn).and_call_original
      expect(Chef::Log).to receive(:warn).with(%r{backup_agent: not touching /etc/backup-agent/config.yaml: ruby_block\[boom\] failed earlier})
      expect { chef_run }.to raise_error(RuntimeError, /boom/)
    end
  end

  describe 'property checks, at compile time' do
    def declare(&block)
      runner = ChefSpec::SoloRunner.new(platform: 'debian', version: '12') { |node| node.chef_environment = 'staging' }
      runner.converge('backup_agent::install') do
        Chef::Recipe.new('wrapper', 'default', runner.run_context).instance_exec { backup_agent_job('x', &block) }
      end
    end

    {
      'an unknown type' => [-> { type 'tarball' }, /Option type must be equal to one of: "files", "command", "ebs_snapshot"!  You passed "tarball"/],
      'an invalid schedule' => [-> { schedule 'daly at 02:00' }, /Option schedule's value daly at 02:00 must be 'every N seconds/],
      'a retention with a bad count' => [-> { retention('keep_daily' => -1) }, /Option retention's value .* must map keep_last/],
      'a drill with a bad schedule' => [-> { drill('schedule' => 'sometimes') }, /Option drill's value .* must be \{schedule => a schedule/],
      'relative paths' => [-> { paths %w(etc) }, /Option paths's value \["etc"\] must be a non-empty list of absolute paths/],
      'a port that is a string' => [-> { port '5432' }, /Property port must be one of: Integer!  You passed "5432"/],
      'a command that is a string' => [-> { command 'pg_dump app' }, /Option command's value pg_dump app must be a non-empty list of strings!/],
    }.each do |what, (block, message)|
      it "refuses #{what}" do
        expect { declare(&block) }.to raise_error(Chef::Exceptions::ValidationFailed, message)
      end
    end

    it 'has no property for a password: secrets come from the data bag item' do
      expect { declare { password 'hunter2' } }.to raise_error(NoMethodError, /password/)
    end

    it 'refuses a name the agent would not accept' do
      runner = ChefSpec::SoloRunner.new(platform: 'debian', version: '12')
      expect { runner.converge_block { backup_agent_job('my job') { type 'files' } } }
        .to raise_error(Chef::Exceptions::ValidationFailed, /backup_agent_job\[my job\]: 'my job' is not a job name/)
    end
  end

  # The properties are the agent's job keys (`backup-agent schema`), under the same names, so a
  # key the agent adds cannot be forgotten here unnoticed. `password` and `secret_env`
  # are left out on purpose: they come from the data bag item only.
  it 'has one property per job key of the agent\'s schema, no more, no less' do
    schema = BackupAgentSpec.agent_schema
    skip 'no agent venv (make venv)' unless schema
    keys = schema['properties']['jobs']['additionalProperties']['allOf'].flat_map { |rule| rule['then']['properties'].keys }.uniq
    properties = Chef::ResourceResolver.resolve(:backup_agent_job).properties(false).keys.map(&:to_s)
    properties = properties.map { |name| name == 'freeze_paths' ? 'freeze' : name } - %w(job_name)
    expect(properties.sort).to eq((keys - %w(password secret_env)).sort)
  end
end
